// Diagonal dynamic-programming form of the ROSA bit-flip estimator (the CUDA kernel for T <= 512).
//
// For QKV ROSA (spec/ROSA.md §2) let L(i, j) be the length of the longest common suffix of
// q[0..i] and k[0..j]: L(i, j) = q[i] == k[j] ? L(i-1, j-1) + 1 : 0. The output at i retrieves
// j + 1 for the largest L(i, j) over j < i (the most recent j among equals), or nothing when
// every L is 0. Indexed by the diagonal d = i - j >= 1 the row update is elementwise,
//     M_i[d] = q[i] == k[i-d] ? M_{i-1}[d] + 1 : 0,
// so a warp keeps one row in registers (lane l holds d = 1 + l + 32c), updates it without any
// cross-lane traffic and finds the winner with one warp max over (M << 16 | 0xFFFF - d).
// A flip at t re-runs rows t .. t+window-1 from the base row M_{t-1}: no automaton to rebuild.
// A query flip stops early once neither run has a match reaching back to t (then every later
// row is identical), like the CPU match-set kernel.
//
// The algorithm is written once against a small "Warp" interface: the CUDA kernel instantiates
// it with a real warp (rosa_flip_cuda.cu), the CPU extension with a one-lane host warp that owns
// every diagonal (rosa_flip_cpu.cpp, `flip_dp_host`), so the CPU tests check the same code path
// that the GPU runs, minus the shuffles.
#pragma once

#include <stdint.h>

#include "rosa_flip.h"

namespace heron_rosa_flip {

// Longest stream the DP kernel handles (32 lanes x 16 diagonals each); longer ones use the
// automaton kernel.
constexpr int kDPMaxLength = 512;

enum DPTarget { kDPToken = 0, kDPQuery = 1, kDPKey = 2 };

// Retrieval of one row from the warp-wide best key.
struct DPRow {
  int32_t retrieved;  // j + 1, or -1
  int32_t count;      // match length (0: no match)
};

ROSA_FLIP_HD DPRow dp_decode(uint32_t best, int32_t i) {
  DPRow row;
  if (best == 0u) {
    row.retrieved = -1;
    row.count = 0;
  } else {
    const int32_t d = 0xFFFF - (int32_t)(best & 0xFFFFu);
    row.retrieved = i - d + 1;
    row.count = (int32_t)(best >> 16);
  }
  return row;
}

// One row of the DP: updates this lane's diagonals d < limit in place (the others keep their
// values) and returns the warp's best key among them; `far` (if not null) receives the best key
// among the diagonals d >= far_from. `flip_pos`/`flipped_key`: the key at flip_pos reads as
// flipped_key (flip_pos < 0: no key flip).
template <int N, class Warp>
ROSA_FLIP_HD uint32_t dp_row(const Warp& warp, int32_t (&M)[N], int32_t i, int32_t query,
                             const uint8_t* keys, int32_t flip_pos, int32_t flipped_key,
                             int32_t limit = 0x7FFFFFFF, int32_t far_from = 0x7FFFFFFF,
                             uint32_t* far = nullptr) {
  uint32_t best = 0u, best_far = 0u;
#pragma unroll
  for (int c = 0; c < N; ++c) {
    const int32_t d = warp.first_diagonal() + c * warp.diagonal_stride();
    if (d >= limit) break;  // d grows with c: a windowed key flip stops after its few diagonals
    const int32_t j = i - d;
    int32_t key = -1;  // j < 0: no key, never equal to a symbol
    if (j >= 0) key = j == flip_pos ? flipped_key : (int32_t)keys[j];
    const int32_t m = key == query ? M[c] + 1 : 0;
    M[c] = m;
    const uint32_t candidate = m > 0 ? (((uint32_t)m << 16) | (uint32_t)(0xFFFF - d)) : 0u;
    best = candidate > best ? candidate : best;
    if (d >= far_from) best_far = candidate > best_far ? candidate : best_far;
  }
  if (far != nullptr) *far = warp.max(best_far);
  return warp.max(best);
}

// Per-stream scratch (shared memory on the GPU): base values, the base rows' best far keys, base
// match lengths and the symbols a flip run produced.
struct DPScratch {
  double* base_value;   // [T]
  uint32_t* base_far;   // [T] best key of the base row among the diagonals d >= window
  int16_t* base_count;  // [T]
  int16_t* symbols;     // [T] output symbol (-1: none) of each row of the current flip run
};

// phi(flipped) - phi(original) for one flip at t: re-runs rows t .. min(T, t + window) - 1.
template <int N, class Warp, typename scalar_t>
ROSA_FLIP_HD double dp_flip(const Warp& warp, const int32_t (&base)[N], const uint8_t* q,
                            const uint8_t* k, const uint8_t* v, const scalar_t* val,
                            int64_t table, int32_t T, int32_t window, int32_t t, int32_t flipped,
                            DPTarget target, const DPScratch& scratch) {
  int32_t M[N];
#pragma unroll
  for (int c = 0; c < N; ++c) M[c] = base[c];
  const int32_t end = t + window < T ? t + window : T;
  const int32_t flip_pos = target == kDPQuery ? -1 : t;
  // A key flip at t is compared at row i only on diagonal i - t < window, and the chains it
  // starts stay on their diagonals: rows t .. t+window-1 differ from the base run on the
  // diagonals d < window alone, so only those are re-run; the others' best is the base row's.
  const bool narrow = target == kDPKey && window < T;
  const int32_t limit = narrow ? window : 0x7FFFFFFF;
  int32_t rows = 0;
  for (int32_t i = t; i < end; ++i) {
    const int32_t query = (i == t && target != kDPKey) ? flipped : (int32_t)q[i];
    uint32_t best = dp_row<N>(warp, M, i, query, k, flip_pos, flipped, limit);
    if (narrow) best = scratch.base_far[i] > best ? scratch.base_far[i] : best;
    const DPRow row = dp_decode(best, i);
    int32_t y = -1;
    if (row.retrieved >= 0)
      y = (target == kDPToken && row.retrieved == t) ? flipped : (int32_t)v[row.retrieved];
    if (warp.lane() == 0) scratch.symbols[i - t] = (int16_t)y;
    ++rows;
    // Keys unchanged and no match of either run reaches back to t: identical from here on.
    if (target == kDPQuery && row.count <= i - t && scratch.base_count[i] <= i - t) break;
  }
  warp.sync();
  double delta = 0.0;
  for (int32_t n = warp.lane(); n < rows; n += warp.lanes()) {
    const int32_t i = t + n;
    delta += (double)val[(int64_t)i * table + scratch.symbols[n] + 1] - scratch.base_value[i];
  }
  delta = warp.sum(delta);
  warp.sync();  // symbols[] is rewritten by the next flip
  return delta;
}

// Every flip of one stream. q, k, v: the stream's symbols (< 2^bits <= 256); val: [T, table];
// dq/dk: [T, bits] written in full (or null); dv: [T, bits], zero on entry, accumulated (or
// null). Token mode: q = k = v, a flip changes all three, result in dq.
template <int N, class Warp, typename scalar_t>
ROSA_FLIP_HD void dp_flip_stream(const Warp& warp, const uint8_t* q, const uint8_t* k,
                                 const uint8_t* v, const scalar_t* val, int32_t T, int32_t bits,
                                 int32_t window, bool token, scalar_t* dq, scalar_t* dk,
                                 scalar_t* dv, const DPScratch& scratch) {
  const int64_t table = ((int64_t)1 << bits) + 1;
  int32_t M[N];
  // Pass 1: the base run (values, match lengths) and the value flips, which only change the
  // outputs that retrieve the flipped position.
#pragma unroll
  for (int c = 0; c < N; ++c) M[c] = 0;
  // The far keys serve windowed key flips only (dp_flip's `narrow`).
  const bool narrow_keys = !token && dk != nullptr && window < T;
  for (int32_t i = 0; i < T; ++i) {
    uint32_t far = 0u;
    const DPRow row = dp_decode(dp_row<N>(warp, M, i, (int32_t)q[i], k, -1, 0, 0x7FFFFFFF, window,
                                          narrow_keys ? &far : nullptr),
                                i);
    const int32_t y = row.retrieved < 0 ? -1 : (int32_t)v[row.retrieved];
    const double base = (double)val[(int64_t)i * table + y + 1];
    if (warp.lane() == 0) {
      scratch.base_value[i] = base;
      scratch.base_far[i] = far;
      scratch.base_count[i] = (int16_t)row.count;
    }
    if (dv != nullptr && row.retrieved >= 0) {
      // Lane m owns bit m of every position, so the sums need no atomics.
      for (int32_t m = warp.lane(); m < bits; m += warp.lanes()) {
        const int32_t flipped = y ^ (1 << m);
        scalar_t& out = dv[(int64_t)row.retrieved * bits + m];
        out += (scalar_t)((double)val[(int64_t)i * table + flipped + 1] - base);
      }
    }
  }
  warp.sync();
  // Pass 2: the base rows again, each flip at t starting from M_{t-1}.
#pragma unroll
  for (int c = 0; c < N; ++c) M[c] = 0;
  for (int32_t t = 0; t < T; ++t) {
    for (int32_t m = 0; m < bits; ++m) {
      if (token) {
        const double delta = dp_flip<N>(warp, M, q, k, v, val, table, T, window, t,
                                        (int32_t)q[t] ^ (1 << m), kDPToken, scratch);
        if (warp.lane() == 0) dq[(int64_t)t * bits + m] = (scalar_t)delta;
        continue;
      }
      if (dq != nullptr) {
        const double delta = dp_flip<N>(warp, M, q, k, v, val, table, T, window, t,
                                        (int32_t)q[t] ^ (1 << m), kDPQuery, scratch);
        if (warp.lane() == 0) dq[(int64_t)t * bits + m] = (scalar_t)delta;
      }
      if (dk != nullptr) {
        const double delta = dp_flip<N>(warp, M, q, k, v, val, table, T, window, t,
                                        (int32_t)k[t] ^ (1 << m), kDPKey, scratch);
        if (warp.lane() == 0) dk[(int64_t)t * bits + m] = (scalar_t)delta;
      }
    }
    dp_row<N>(warp, M, t, (int32_t)q[t], k, -1, 0);
  }
}

// The host "warp": one lane that owns every diagonal 1, 2, 3, ... (N of them).
struct HostWarp {
  int32_t lane() const { return 0; }
  int32_t lanes() const { return 1; }
  int32_t first_diagonal() const { return 1; }
  int32_t diagonal_stride() const { return 1; }
  uint32_t max(uint32_t x) const { return x; }
  double sum(double x) const { return x; }
  void sync() const {}
};

}  // namespace heron_rosa_flip
