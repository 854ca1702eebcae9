// Torch glue for the CUDA flip estimator (kernels in rosa_flip_cuda.cu).
//
// The caller (heron/ops/rosa/grad.py) makes the tensors' device current and passes the raw
// handle of its current stream, so this file needs only the CUDA runtime API header (and
// syntax-checks against a CPU build of torch).
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

namespace heron_rosa_flip {
int64_t flip_scratch_per_worker(int64_t T, int bits);
template <typename scalar_t>
cudaError_t launch_rosa_flip(const int64_t* q, const int64_t* k, const int64_t* v,
                             const scalar_t* val, int64_t S, int64_t T, int bits, int64_t window,
                             bool token, scalar_t* dq, scalar_t* dk, scalar_t* dv,
                             int32_t* scratch, int64_t workers, int32_t* retrieved,
                             double* base_value, cudaStream_t stream);
cudaError_t launch_rosa_retrieval(const int64_t* q, const int64_t* k, int64_t S, int64_t T,
                                  int32_t alphabet, int32_t* scratch, int64_t workers,
                                  int64_t* out, cudaStream_t stream);
}  // namespace heron_rosa_flip

namespace {

// Scratch budget for the per-thread automata; enough workers to fill an H100 on small alphabets.
constexpr int64_t kScratchBytes = int64_t(1) << 30;
constexpr int64_t kThreads = 128;

int64_t worker_count(int64_t tasks, int64_t per_worker_ints) {
  int64_t by_memory = kScratchBytes / (per_worker_ints * 4);
  by_memory = std::max<int64_t>(kThreads, by_memory / kThreads * kThreads);
  return std::max<int64_t>(1, std::min(tasks, by_memory));
}

void check_streams(const torch::Tensor& t, const char* name, const torch::Tensor& like, int64_t S,
                   int64_t T) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device());
  TORCH_CHECK(t.scalar_type() == torch::kInt64, name, " must be int64");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == S && t.size(1) == T, name, " must have shape [S, T]");
}

std::vector<torch::Tensor> flip_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                     torch::Tensor val, int64_t bits, int64_t window, bool token,
                                     bool want_q, bool want_k, bool want_v, cudaStream_t stream) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "bits must be in 1..8");
  TORCH_CHECK(val.is_cuda() && val.dim() == 3, "val must be a CUDA tensor [S, T, 2^bits + 1]");
  const int64_t S = val.size(0), T = val.size(1);
  TORCH_CHECK(val.size(2) == (int64_t(1) << bits) + 1, "val must be [S, T, 2^bits + 1]");
  check_streams(q, "q", val, S, T);
  check_streams(k, "k", val, S, T);
  check_streams(v, "v", val, S, T);
  if (window <= 0 || window > T) window = T;
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  val = val.contiguous();
  auto options = val.options();
  torch::Tensor dq = want_q ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  torch::Tensor dk = (want_k && !token) ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  torch::Tensor dv = (want_v && !token) ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  const int64_t per_worker = heron_rosa_flip::flip_scratch_per_worker(T, static_cast<int>(bits));
  const int64_t targets = token ? 1 : (int64_t(want_q) + int64_t(want_k));
  // per_worker == 0: the DP kernel (short streams) keeps its scratch in shared memory.
  const bool automaton = per_worker > 0;
  const int64_t workers =
      automaton ? worker_count(std::max<int64_t>(S, S * targets * T * bits), per_worker) : 0;
  auto scratch = torch::empty({std::max<int64_t>(1, workers * per_worker)}, options.dtype(torch::kInt32));
  auto retrieved = torch::empty({automaton ? S * T : 1}, options.dtype(torch::kInt32));
  auto base_value = torch::empty({automaton ? S * T : 1}, options.dtype(torch::kFloat64));
  AT_DISPATCH_FLOATING_TYPES(val.scalar_type(), "rosa_flip_cuda", [&] {
    const cudaError_t err = heron_rosa_flip::launch_rosa_flip<scalar_t>(
        q.data_ptr<int64_t>(), k.data_ptr<int64_t>(), v.data_ptr<int64_t>(),
        val.data_ptr<scalar_t>(), S, T, static_cast<int>(bits), window, token,
        dq.defined() ? dq.data_ptr<scalar_t>() : nullptr,
        dk.defined() ? dk.data_ptr<scalar_t>() : nullptr,
        dv.defined() ? dv.data_ptr<scalar_t>() : nullptr, scratch.data_ptr<int32_t>(), workers,
        retrieved.data_ptr<int32_t>(), base_value.data_ptr<double>(), stream);
    TORCH_CHECK(err == cudaSuccess, "rosa flip kernel failed: ", cudaGetErrorString(err));
  });
  return {dq, dk, dv};
}

torch::Tensor flip_token(torch::Tensor x, torch::Tensor val, int64_t bits, int64_t window,
                         int64_t cuda_stream) {
  return flip_impl(x, x, x, val, bits, window, true, true, false, false,
                   reinterpret_cast<cudaStream_t>(cuda_stream))[0];
}

std::vector<torch::Tensor> flip_qkv(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor val, int64_t bits, int64_t window, bool want_q,
                                    bool want_k, bool want_v, int64_t cuda_stream) {
  return flip_impl(q, k, v, val, bits, window, false, want_q, want_k, want_v,
                   reinterpret_cast<cudaStream_t>(cuda_stream));
}

torch::Tensor retrieval(torch::Tensor q, torch::Tensor k, int64_t alphabet, int64_t cuda_stream) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 2, "q must be a CUDA tensor [S, T]");
  TORCH_CHECK(alphabet >= 1 && alphabet <= 256, "alphabet must be in 1..256");
  const int64_t S = q.size(0), T = q.size(1);
  check_streams(q, "q", q, S, T);
  check_streams(k, "k", q, S, T);
  q = q.contiguous();
  k = k.contiguous();
  auto out = torch::empty({S, T}, q.options());
  const int64_t per_worker = (2 * T + 2) * (alphabet + 3);
  const int64_t workers = worker_count(std::max<int64_t>(S, 1), per_worker);
  auto scratch = torch::empty({workers * per_worker}, q.options().dtype(torch::kInt32));
  const cudaError_t err = heron_rosa_flip::launch_rosa_retrieval(
      q.data_ptr<int64_t>(), k.data_ptr<int64_t>(), S, T, static_cast<int32_t>(alphabet),
      scratch.data_ptr<int32_t>(), workers, out.data_ptr<int64_t>(),
      reinterpret_cast<cudaStream_t>(cuda_stream));
  TORCH_CHECK(err == cudaSuccess, "rosa retrieval kernel failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("flip_token", &flip_token, "bit-flip phi differences for token/channel ROSA [S, T, bits]");
  m.def("flip_qkv", &flip_qkv, "bit-flip phi differences for QKV ROSA (dq, dk, dv)");
  m.def("retrieval", &retrieval, "retrieval index j + 1 of every position, -1 = no match");
}
