// Sizes and entry point of the grouping kernel (rosa_grouping_cuda.cu), shared with the host
// code that dispatches to it. No torch headers; of CUDA only the runtime API types.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "rosa_core.h"  // ROSA_HD

namespace heron_rosa_grouping {

// Elements per stream (T in token mode, 2T for QKV): at most 16 per thread of a 1024-thread
// block, and 16-bit element ids.
constexpr int64_t kMaxElements = 16384;
// Largest symbol the kernel stores (one byte per position); streams with larger symbols are
// handed to the automaton.
constexpr int64_t kMaxSymbol = 255;

// Dynamic shared memory of one block: ids (2 x uint16), group scratch (uint16), flags
// (2 x uint8) per element; answers (int16) and symbols (1 or 2 bytes) per position.
ROSA_HD int64_t shared_bytes(int64_t length, bool token) {
  const int64_t elements = token ? length : 2 * length;
  return elements * (2 * 2 + 2 + 2) + length * 2 + length * (token ? 1 : 2) + 16;
}

ROSA_HD bool fits(int64_t length, bool token) {
  const int64_t elements = token ? length : 2 * length;
  return length >= 0 && elements <= kMaxElements;
}

// One block per stream of contiguous int64 [batch, length, channels] q, k, v (token mode when
// q == k). Writes `out` for every stream it finishes and handed_over[stream] = 0; sets
// handed_over[stream] = 1 for the others (a symbol above kMaxSymbol, or the work budget spent),
// leaving their `out` to the automaton. Requires fits(length, q == k).
cudaError_t launch(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                   int64_t batch, int64_t length, int64_t channels, int64_t work_per_element,
                   int32_t* handed_over, cudaStream_t stream);
}  // namespace heron_rosa_grouping
