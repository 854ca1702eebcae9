// Torch glue for the WKV7 CUDA kernels: checks, output allocation, dtype dispatch. The CUDA
// stream comes from Python (torch.cuda.current_stream().cuda_stream) so this file needs no CUDA
// headers.
#include <torch/extension.h>

#include <vector>

#include "wkv7.h"

namespace {

heron_wkv7::DType dtype_code(const torch::Tensor& x) {
  switch (x.scalar_type()) {
    case torch::kFloat32: return heron_wkv7::DType::kFloat32;
    case torch::kBFloat16: return heron_wkv7::DType::kBFloat16;
    case torch::kFloat16: return heron_wkv7::DType::kFloat16;
    default: TORCH_CHECK(false, "wkv7 CUDA: inputs must be float32, bfloat16 or float16, got ", x.scalar_type());
  }
}

void check_input(const torch::Tensor& x, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(x.is_cuda(), "wkv7 CUDA: ", name, " must be a CUDA tensor");
  TORCH_CHECK(x.is_contiguous(), "wkv7 CUDA: ", name, " must be contiguous");
  TORCH_CHECK(x.sizes() == like.sizes(), "wkv7 CUDA: ", name, " has shape ", x.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "wkv7 CUDA: ", name, " has dtype ", x.scalar_type(), ", expected ", like.scalar_type());
}

void check_state(const torch::Tensor& x, int64_t batch, int64_t heads, int64_t n, const char* name) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.scalar_type() == torch::kFloat32, "wkv7 CUDA: ", name,
              " must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == batch && x.size(1) == heads && x.size(2) == n && x.size(3) == n,
              "wkv7 CUDA: ", name, " must have shape [B, H, N, N]");
}

struct Shape {
  int64_t batch, time, heads, n;
};

// The six [B, T, H, N] inputs: one shape, one dtype, CUDA, contiguous, a supported head size.
Shape check_inputs(const torch::Tensor& r, const torch::Tensor& w, const torch::Tensor& k,
                   const torch::Tensor& v, const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(r.dim() == 4, "wkv7 CUDA: r must be [B, T, H, N]");
  const Shape shape{r.size(0), r.size(1), r.size(2), r.size(3)};
  TORCH_CHECK(heron_wkv7::head_size_supported(static_cast<int>(shape.n)), "wkv7 CUDA: head size ",
              shape.n, " is not supported (16, 32, 64 or 128)");
  check_input(r, r, "r");
  check_input(w, r, "w");
  check_input(k, r, "k");
  check_input(v, r, "v");
  check_input(a, r, "a");
  check_input(b, r, "b");
  return shape;
}

// Segments of segment_length steps; the forward saves the state entering each one.
int64_t segment_count(const Shape& shape) {
  const int64_t every = heron_wkv7::segment_length(static_cast<int>(shape.n));
  return (shape.time + every - 1) / every;
}

// The forward and the state-gradient pass read the step vectors in 16-byte pieces; a tensor that
// starts elsewhere (a view at an odd offset) is copied into a fresh, aligned allocation.
torch::Tensor aligned16(const torch::Tensor& x) {
  return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 ? x.clone() : x;
}

void check_rows_per_thread(int64_t rows_per_thread) {
  TORCH_CHECK(rows_per_thread == 1 || rows_per_thread == 2 || rows_per_thread == 4,
              "wkv7 CUDA: rows_per_thread must be 1, 2 or 4, got ", rows_per_thread);
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "wkv7 CUDA: ", what, " kernel launch failed with CUDA error ", code);
}

}  // namespace

int64_t segment_length(int64_t head_size) { return heron_wkv7::segment_length(static_cast<int>(head_size)); }

// Returns [y, final_state, removal, checkpoints]; the last two are empty unless save_for_backward.
std::vector<torch::Tensor> forward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                   torch::Tensor a, torch::Tensor b, c10::optional<torch::Tensor> initial_state,
                                   bool save_for_backward, int64_t rows_per_thread, int64_t checkpoint_stride,
                                   int64_t stream) {
  const Shape shape = check_inputs(r, w, k, v, a, b);
  const int64_t batch = shape.batch, time = shape.time, heads = shape.heads, n = shape.n;
  check_rows_per_thread(rows_per_thread);
  r = aligned16(r), w = aligned16(w), k = aligned16(k), v = aligned16(v), a = aligned16(a), b = aligned16(b);
  TORCH_CHECK(checkpoint_stride >= 1, "wkv7 CUDA: checkpoint_stride must be >= 1, got ", checkpoint_stride);
  const float* initial = nullptr;
  if (initial_state.has_value()) {
    check_state(*initial_state, batch, heads, n, "state");
    initial = initial_state->data_ptr<float>();
  }
  auto f32 = r.options().dtype(torch::kFloat32);
  auto y = torch::empty_like(r);
  auto final_state = torch::empty({batch, heads, n, n}, f32);
  const int64_t segments = segment_count(shape);
  torch::Tensor removal = torch::empty({save_for_backward ? batch : 0, time, heads, n}, f32);
  // one more slot for the final state, where the backward starts
  const int64_t slots = (segments + checkpoint_stride - 1) / checkpoint_stride + 1;
  torch::Tensor checkpoints = torch::empty({save_for_backward ? batch : 0, heads, slots, n, n}, f32);
  check_launch(heron_wkv7::launch_forward(
                   dtype_code(r), batch, time, heads, n, static_cast<int>(rows_per_thread),
                   static_cast<int>(checkpoint_stride), r.data_ptr(),
                   w.data_ptr(), k.data_ptr(), v.data_ptr(), a.data_ptr(), b.data_ptr(), initial, y.data_ptr(),
                   final_state.data_ptr<float>(), save_for_backward ? removal.data_ptr<float>() : nullptr,
                   save_for_backward ? checkpoints.data_ptr<float>() : nullptr, reinterpret_cast<void*>(stream)),
               "forward");
  return {y, final_state, removal, checkpoints};
}

// Returns [grad_r, grad_w, grad_k, grad_v, grad_a, grad_b, grad_initial_state].
std::vector<torch::Tensor> backward(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor a, torch::Tensor b, torch::Tensor removal,
                                    torch::Tensor checkpoints, torch::Tensor grad_y,
                                    c10::optional<torch::Tensor> grad_final_state, int64_t columns_per_thread,
                                    double max_log_growth, int64_t stream) {
  const Shape shape = check_inputs(r, w, k, v, a, b);
  const int64_t batch = shape.batch, time = shape.time, heads = shape.heads, n = shape.n;
  check_input(grad_y, r, "grad_y");
  TORCH_CHECK(columns_per_thread == 1 || columns_per_thread == 2,
              "wkv7 CUDA: columns_per_thread must be 1 or 2, got ", columns_per_thread);
  const int64_t segments = segment_count(shape);
  TORCH_CHECK(removal.is_contiguous() && removal.scalar_type() == torch::kFloat32 &&
                  removal.sizes() == r.sizes(),
              "wkv7 CUDA: saved removal vectors are missing (forward ran without save_for_backward?)");
  TORCH_CHECK(checkpoints.is_contiguous() && checkpoints.scalar_type() == torch::kFloat32 &&
                  checkpoints.numel() == batch * heads * (segments + 1) * n * n,
              "wkv7 CUDA: saved state checkpoints are missing or have the wrong size");
  const float* grad_final = nullptr;
  if (grad_final_state.has_value()) {
    check_state(*grad_final_state, batch, heads, n, "grad_final_state");
    grad_final = grad_final_state->data_ptr<float>();
  }
  auto grad_r = torch::empty_like(r), grad_w = torch::empty_like(r), grad_k = torch::empty_like(r),
       grad_v = torch::empty_like(r), grad_a = torch::empty_like(r), grad_b = torch::empty_like(r);
  auto grad_initial = torch::empty({batch, heads, n, n}, r.options().dtype(torch::kFloat32));
  check_launch(heron_wkv7::launch_backward(
                   dtype_code(r), batch, time, heads, n, static_cast<int>(columns_per_thread),
                   static_cast<float>(max_log_growth), r.data_ptr(),
                   w.data_ptr(), k.data_ptr(), v.data_ptr(), a.data_ptr(), b.data_ptr(), removal.data_ptr<float>(),
                   checkpoints.data_ptr<float>(), grad_y.data_ptr(), grad_final, grad_r.data_ptr(),
                   grad_w.data_ptr(), grad_k.data_ptr(), grad_v.data_ptr(), grad_a.data_ptr(),
                   grad_b.data_ptr(), grad_initial.data_ptr<float>(), reinterpret_cast<void*>(stream)),
               "backward");
  return {grad_r, grad_w, grad_k, grad_v, grad_a, grad_b, grad_initial};
}

// Pass 1 of the split backward; returns [grad_b_dot, grad_v, future_grads, grad_initial_state].
std::vector<torch::Tensor> state_gradients(torch::Tensor r, torch::Tensor w, torch::Tensor k, torch::Tensor a,
                                           torch::Tensor b, torch::Tensor grad_y,
                                           c10::optional<torch::Tensor> grad_final_state, int64_t rows_per_thread,
                                           int64_t chunk_segments, int64_t stream) {
  const Shape shape = check_inputs(r, w, k, grad_y, a, b);
  const int64_t batch = shape.batch, time = shape.time, heads = shape.heads, n = shape.n;
  check_rows_per_thread(rows_per_thread);
  r = aligned16(r), w = aligned16(w), k = aligned16(k), a = aligned16(a), b = aligned16(b);
  grad_y = aligned16(grad_y);
  TORCH_CHECK(chunk_segments >= 1, "wkv7 CUDA: chunk_segments must be >= 1, got ", chunk_segments);
  const float* grad_final = nullptr;
  if (grad_final_state.has_value()) {
    check_state(*grad_final_state, batch, heads, n, "grad_final_state");
    grad_final = grad_final_state->data_ptr<float>();
  }
  auto f32 = r.options().dtype(torch::kFloat32);
  const int64_t chunks = (segment_count(shape) + chunk_segments - 1) / chunk_segments;
  auto grad_b_dot = torch::empty({batch, time, heads, n}, f32);
  auto grad_v = torch::empty_like(r);
  auto future_grads = torch::empty({batch, heads, chunks, n, n}, f32);
  auto grad_initial = torch::empty({batch, heads, n, n}, f32);
  check_launch(heron_wkv7::launch_state_gradients(
                   dtype_code(r), batch, time, heads, n, static_cast<int>(rows_per_thread),
                   static_cast<int>(chunk_segments), r.data_ptr(), w.data_ptr(), k.data_ptr(), a.data_ptr(),
                   b.data_ptr(), grad_y.data_ptr(), grad_final, grad_b_dot.data_ptr<float>(), grad_v.data_ptr(),
                   future_grads.data_ptr<float>(), grad_initial.data_ptr<float>(), reinterpret_cast<void*>(stream)),
               "state gradients");
  return {grad_b_dot, grad_v, future_grads, grad_initial};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("segment_length", &segment_length, "steps between saved states for a head size");
  m.def("forward", &forward, "WKV7 forward (CUDA)");
  m.def("backward", &backward, "WKV7 backward (CUDA)");
  m.def("state_gradients", &state_gradients, "WKV7 split backward, pass 1 (CUDA)");
}
