// Torch glue for the CUDA ROSA kernel (rosa_cuda.cu): checks, workspace, stream.
#include <torch/extension.h>

// Only the CUDA runtime API header: the caller passes the stream handle and has made q's device
// current, so this file needs no c10/cuda headers (and syntax-checks against a CPU torch).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "rosa_core.h"
#include "rosa_cuda.h"
#include "rosa_grouping.h"

namespace {

void check_streams(const torch::Tensor& tensor, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(tensor.device() == like.device(), name, " must be on the device of q");
  TORCH_CHECK(tensor.scalar_type() == torch::kInt64, name, " must be int64");
  TORCH_CHECK(tensor.dim() == 3, name, " must be [B, T, S]");
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(tensor.sizes() == like.sizes(), name, " must have the shape of q");
}

// q, k, v: contiguous int64 CUDA [B, T, S], symbols validated by the caller (0 <= s < 2**31).
// sigma > 0: dense transitions over 0..sigma-1 (every key symbol below sigma); 0: hashed.
// workspace_limit_bytes bounds the scratch of one launch; cuda_stream is the raw cudaStream_t of
// the caller's current stream (torch.cuda.current_stream().cuda_stream) on q's device, which
// the caller has made current. grouping_work_per_element > 0 runs the grouping kernel first
// (when the streams fit in shared memory) with that work budget; 0 runs the automaton alone.
torch::Tensor rosa_forward_cuda(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t sigma,
                                int64_t threads_per_block, int64_t workspace_limit_bytes,
                                int64_t cuda_stream, int64_t chain_budget_per_token,
                                int64_t grouping_work_per_element) {
  check_streams(q, q, "q");
  check_streams(k, q, "k");
  check_streams(v, q, "v");
  TORCH_CHECK(sigma >= 0 && sigma <= heron_rosa::kDenseMaxSigma, "sigma out of range");
  TORCH_CHECK(chain_budget_per_token >= 0, "chain_budget_per_token must be >= 0");
  TORCH_CHECK(grouping_work_per_element >= 0, "grouping_work_per_element must be >= 0");
  TORCH_CHECK(threads_per_block >= 1 && threads_per_block <= 1024, "threads_per_block out of range");
  const int64_t batch = q.size(0), length = q.size(1), channels = q.size(2);
  TORCH_CHECK(length < (int64_t(1) << 29), "T is too long for 32-bit state indices");
  auto out = torch::empty_like(q);
  const int64_t num_streams = batch * channels;
  if (num_streams == 0 || length == 0) return out;
  const int64_t bytes_per_stream = heron_rosa::make_layout(length, sigma).total * 4;
  TORCH_CHECK(workspace_limit_bytes > 0, "workspace_limit_bytes must be positive");
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(num_streams, workspace_limit_bytes / bytes_per_stream));
  auto workspace = torch::empty({chunk * (bytes_per_stream / 4)},
                                torch::TensorOptions().dtype(torch::kInt32).device(q.device()));
  const bool token = q.data_ptr() == k.data_ptr();
  if (grouping_work_per_element > 0 && heron_rosa_grouping::fits(length, token)) {
    auto handed_over = torch::empty({num_streams},
                                    torch::TensorOptions().dtype(torch::kInt32).device(q.device()));
    const cudaError_t status = heron_rosa_forward_cuda_grouping(
        q.data_ptr<int64_t>(), k.data_ptr<int64_t>(), v.data_ptr<int64_t>(),
        out.data_ptr<int64_t>(), batch, length, channels, sigma, chain_budget_per_token,
        grouping_work_per_element, handed_over.data_ptr<int32_t>(), workspace.data_ptr<int32_t>(),
        chunk, static_cast<int>(threads_per_block), reinterpret_cast<cudaStream_t>(cuda_stream));
    TORCH_CHECK(status == cudaSuccess, "ROSA CUDA launch failed: ", cudaGetErrorString(status));
    return out;
  }
  const cudaError_t status = heron_rosa_forward_cuda(
      q.data_ptr<int64_t>(), k.data_ptr<int64_t>(), v.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
      batch, length, channels, sigma, chain_budget_per_token, workspace.data_ptr<int32_t>(), chunk,
      static_cast<int>(threads_per_block), reinterpret_cast<cudaStream_t>(cuda_stream));
  TORCH_CHECK(status == cudaSuccess, "ROSA CUDA launch failed: ", cudaGetErrorString(status));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rosa_forward_cuda, "Exact QKV ROSA on [B, T, S] int64 CUDA tensors",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("sigma"),
        pybind11::arg("threads_per_block"), pybind11::arg("workspace_limit_bytes"),
        pybind11::arg("cuda_stream"),
        pybind11::arg("chain_budget_per_token") = heron_rosa::kDefaultChainBudgetPerToken,
        pybind11::arg("grouping_work_per_element") = 0);
  m.attr("dense_max_sigma") = heron_rosa::kDenseMaxSigma;
  m.attr("grouping_max_symbol") = heron_rosa_grouping::kMaxSymbol;
}
