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

// Token streams with at most this many runs of equal symbols are answered from their runs
// (O(T R + R^2), the `rosa_runs` of reference.py) instead of by the grouping: the nearly constant
// channels of a trained model's deep layers, on which the grouping's work grows with the match
// length until it hands them to the automaton.
constexpr int kMaxRuns = 64;

// Bytes of the runs branch's tables: run starts (uint16, one more for the end) and symbols
// (uint16), and the backward common lengths E(a, b) for a > b (uint16, triangular).
ROSA_HD int64_t runs_bytes() {
  return (kMaxRuns + 1) * 2 + kMaxRuns * 2 + kMaxRuns * (kMaxRuns - 1) / 2 * 2;
}

// Bytes in front of the symbols: per element ids (2 x uint16), group scratch (uint16) and
// flags (2 x uint8), and answers (int16) per position; in token mode at least the runs
// branch's tables, which reuse this region. A multiple of 16.
ROSA_HD int64_t work_region_bytes(int64_t length, bool token) {
  const int64_t elements = token ? length : 2 * length;
  int64_t bytes = elements * (2 * 2 + 2 + 2) + length * 2;
  if (token && bytes < runs_bytes()) bytes = runs_bytes();
  return (bytes + 15) / 16 * 16;
}

// Dynamic shared memory of one block: the work region, then the symbols (1 or 2 bytes per
// position).
ROSA_HD int64_t shared_bytes(int64_t length, bool token) {
  return work_region_bytes(length, token) + length * (token ? 1 : 2) + 16;
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
