// WKV7 CUDA launchers: raw pointers and a stream, no torch types (the binding does the glue).
//
// Layouts (all contiguous): inputs r, w, k, v, a, b, y and their gradients [B, T, H, N] in the
// input dtype; states [B, H, N, N] float32 with the first N indexing values and the second keys
// (the official layout); `removal` [B, T, H, N] float32 holds S_{t-1} a_t of the forward pass;
// `checkpoints` [B, H, num_segments, N, N] float32 holds the state entering each segment of
// wkv7_segment_length(N) steps. Both are written by the forward only when non-null and are
// required by the backward.
#pragma once

#include <cstdint>

namespace heron_wkv7 {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Steps between the saved states of the forward pass (the backward recomputes inside a segment).
int segment_length(int head_size);
bool head_size_supported(int head_size);

// Returns 0 on success, else a cudaError_t value.
int launch_forward(DType dtype, int batch, int time, int heads, int head_size, const void* r,
                   const void* w, const void* k, const void* v, const void* a, const void* b,
                   const float* initial_state, void* y, float* final_state, float* removal,
                   float* checkpoints, void* stream);

int launch_backward(DType dtype, int batch, int time, int heads, int head_size, const void* r,
                    const void* w, const void* k, const void* v, const void* a, const void* b,
                    const float* removal, const float* checkpoints, const void* grad_y,
                    const float* grad_final_state, void* grad_r, void* grad_w, void* grad_k,
                    void* grad_v, void* grad_a, void* grad_b, float* grad_initial_state,
                    void* stream);

}  // namespace heron_wkv7
