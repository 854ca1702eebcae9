// WKV7 CUDA launchers: raw pointers and a stream, no torch types (the binding does the glue).
//
// Layouts (all contiguous): inputs r, w, k, v, a, b, y and their gradients [B, T, H, N] in the
// input dtype; states [B, H, N, N] float32 with the first N indexing values and the second keys
// (the official layout); `removal` [B, T, H, N] float32 holds S_{t-1} a_t of the forward pass;
// `checkpoints` [B, H, num_slots, N, N] float32 holds the state entering every checkpoint_stride-th
// segment of segment_length(N) steps and, last, the final state (num_slots =
// ceil(num_segments / checkpoint_stride) + 1; the sequential backward needs checkpoint_stride 1). Both are written by the forward only when
// non-null and are required by the backward. The backward steps backwards through a segment
// (dividing by the decay) when no column's sum of exp(w) over the segment exceeds
// max_log_growth, else recomputes from the segment's entry state; max_log_growth <= 0 always
// recomputes.
#pragma once

#include <cstdint>

namespace heron_wkv7 {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Steps between the saved states of the forward pass (the backward recomputes inside a segment).
int segment_length(int head_size);
bool head_size_supported(int head_size);

// Returns 0 on success, else a cudaError_t value.
// rows_per_thread: 1, 2 or 4 state rows per lane group in the forward and the state-gradient pass
// (2 applies to N = 32 and 64, 4 to N = 64 and 128; elsewhere the nearest that applies). Both read
// r, w, k, v (dy), a, b in 16-byte pieces: their pointers must be 16-byte aligned.
int launch_forward(DType dtype, int batch, int time, int heads, int head_size, int rows_per_thread,
                   int checkpoint_stride, const void* r, const void* w, const void* k, const void* v,
                   const void* a, const void* b, const float* initial_state, void* y, float* final_state,
                   float* removal, float* checkpoints, void* stream);

// Pass 1 of the split backward: grad_b_dot [B, T, H, N] float32 (G_t b_t), grad_v (G_t k_t, the
// input dtype), future_grads [B, H, num_chunks, N, N] float32 (G entering the last step of each
// chunk of chunk_segments segments, from the later steps only) and the initial state's gradient.
// grad_final_state may be null (zeros).
int launch_state_gradients(DType dtype, int batch, int time, int heads, int head_size, int rows_per_thread,
                           int chunk_segments, const void* r, const void* w, const void* k, const void* a,
                           const void* b, const void* grad_y, const float* grad_final_state, float* grad_b_dot,
                           void* grad_v, float* future_grads, float* grad_initial_state, void* stream);

// columns_per_thread: 1 or 2 state columns per lane group in the backward (2 applies to N = 32, 64).
int launch_backward(DType dtype, int batch, int time, int heads, int head_size,
                    int columns_per_thread, float max_log_growth, const void* r, const void* w,
                    const void* k, const void* v, const void* a, const void* b, const float* removal,
                    const float* checkpoints, const void* grad_y, const float* grad_final_state,
                    void* grad_r, void* grad_w, void* grad_k, void* grad_v, void* grad_a,
                    void* grad_b, float* grad_initial_state, void* stream);

}  // namespace heron_wkv7
