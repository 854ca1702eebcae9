// CUDA bit-flip gradient estimator for ROSA (spec/ROSA.md §4).
//
// Semantics are those of rosa_flip_cpu.cpp: for every flip of bit m at position t of a stream,
// phi(flipped) - phi(original) with phi = sum_i val[i][y_i + 1]. Two kernels:
// - T <= kDPMaxLength (512): one warp per stream runs the diagonal DP of rosa_flip_dp.h (a row
//   of match lengths in registers, a warp max per position, a flip re-runs only its window
//   from the base row). Symbols and per-position scratch live in shared memory.
// - longer streams: one thread per (stream, flip). A GPU thread has no room for the CPU's
//   per-position match-set lists, so each flip task rebuilds a suffix automaton from position 0
//   (O(T) steps per flip) and re-runs positions t .. min(T, t + window) - 1 flipped.
// Tasks are numbered with the flip position fastest, so the threads of a warp work on one stream
// and share their prefix; their automata are interleaved in the scratch buffer (stride = number
// of workers), so identical accesses during the shared prefix coalesce.
//
// Kernels and launchers take raw pointers and a cudaStream_t; no torch headers (the binding in
// rosa_flip_cuda_binding.cpp does the torch glue). Scratch: `workers` automata of
// automaton_states(T) states each, (alphabet + 3) int32 per state.
#include <cuda_runtime.h>
#include <stdint.h>

#include "rosa_flip.h"
#include "rosa_flip_dp.h"

namespace heron_rosa_flip {
namespace {

constexpr int kThreads = 128;

__device__ Automaton worker_automaton(int32_t* scratch, int64_t workers, int64_t states,
                                      int32_t alphabet, int64_t worker) {
  Automaton a;
  a.alphabet = alphabet;
  a.stride = workers;
  a.next = scratch + worker;
  a.link = a.next + states * alphabet * workers;
  a.length = a.link + states * workers;
  a.last_end = a.length + states * workers;
  reset(a);
  return a;
}

// Base run of every stream: retrieval indices, base values, and (optionally) the value-flip
// deltas, which only need the base retrieval (an output changes iff it retrieved position t).
template <typename scalar_t>
__global__ void base_kernel(const int64_t* __restrict__ q, const int64_t* __restrict__ k,
                            const int64_t* __restrict__ v, const scalar_t* __restrict__ val,
                            int64_t S, int64_t T, int bits, int32_t* scratch, int64_t workers,
                            int32_t* retrieved, double* base_value, scalar_t* dv) {
  const int64_t worker = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (worker >= workers) return;
  const int32_t alphabet = 1 << bits;
  const int64_t table = alphabet + 1;
  const int64_t states = automaton_states(T);
  for (int64_t s = worker; s < S; s += workers) {
    Automaton a = worker_automaton(scratch, workers, states, alphabet, worker);
    const int64_t* qs = q + s * T;
    const int64_t* ks = k + s * T;
    const int64_t* vs = v + s * T;
    const scalar_t* vals = val + s * T * table;
    for (int64_t i = 0; i < T; ++i) {
      const int32_t r = step(a, (int32_t)qs[i], (int32_t)ks[i]);
      retrieved[s * T + i] = r;
      const int32_t y = r < 0 ? -1 : (int32_t)vs[r];
      const double base = (double)vals[i * table + y + 1];
      base_value[s * T + i] = base;
      if (dv != nullptr && r >= 0) {
        for (int m = 0; m < bits; ++m) {
          const int32_t flipped = y ^ (1 << m);
          dv[(s * T + r) * bits + m] += (scalar_t)((double)vals[i * table + flipped + 1] - base);
        }
      }
    }
  }
}

// target 0: token (q = k = v flipped together), 1: query only, 2: key only.
template <typename scalar_t>
__global__ void flip_kernel(const int64_t* __restrict__ q, const int64_t* __restrict__ k,
                            const int64_t* __restrict__ v, const scalar_t* __restrict__ val,
                            const double* __restrict__ base_value, int64_t S, int64_t T, int bits,
                            int64_t window, int first_target, int num_targets, int32_t* scratch,
                            int64_t workers, scalar_t* dq, scalar_t* dk) {
  const int64_t worker = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (worker >= workers) return;
  const int32_t alphabet = 1 << bits;
  const int64_t table = alphabet + 1;
  const int64_t states = automaton_states(T);
  const int64_t flips = T * bits;
  const int64_t tasks = S * num_targets * flips;
  for (int64_t task = worker; task < tasks; task += workers) {
    const int64_t s = task / (num_targets * flips);
    const int64_t rest = task % (num_targets * flips);
    const int target = first_target + (int)(rest / flips);
    const int64_t flip = rest % flips;
    const int64_t t = flip / bits;
    const int m = (int)(flip % bits);
    const int64_t* qs = q + s * T;
    const int64_t* ks = k + s * T;
    const int64_t* vs = v + s * T;
    const scalar_t* vals = val + s * T * table;
    const double* bases = base_value + s * T;
    const int32_t flipped = (int32_t)((target == 2 ? ks[t] : qs[t]) ^ (1 << m));
    Automaton a = worker_automaton(scratch, workers, states, alphabet, worker);
    for (int64_t i = 0; i < t; ++i) step(a, (int32_t)qs[i], (int32_t)ks[i]);
    const int64_t end = t + window < T ? t + window : T;
    double delta = 0.0;
    for (int64_t i = t; i < end; ++i) {
      int32_t qi = (int32_t)qs[i], ki = (int32_t)ks[i];
      if (i == t) {
        if (target != 2) qi = flipped;
        if (target != 1) ki = flipped;
      }
      const int32_t r = step(a, qi, ki);
      int32_t y = -1;
      if (r >= 0) y = (target == 0 && r == t) ? flipped : (int32_t)vs[r];
      delta += (double)vals[i * table + y + 1] - bases[i];
    }
    scalar_t* out = target == 2 ? dk : dq;
    out[(s * T + t) * bits + m] = (scalar_t)delta;
  }
}

__global__ void retrieval_kernel(const int64_t* __restrict__ q, const int64_t* __restrict__ k,
                                 int64_t S, int64_t T, int32_t alphabet, int32_t* scratch,
                                 int64_t workers, int64_t* out) {
  const int64_t worker = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (worker >= workers) return;
  const int64_t states = automaton_states(T);
  for (int64_t s = worker; s < S; s += workers) {
    Automaton a = worker_automaton(scratch, workers, states, alphabet, worker);
    for (int64_t i = 0; i < T; ++i)
      out[s * T + i] = step(a, (int32_t)q[s * T + i], (int32_t)k[s * T + i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Diagonal DP (rosa_flip_dp.h): one warp per stream.

struct DeviceWarp {
  int32_t lane_;
  __device__ int32_t lane() const { return lane_; }
  __device__ int32_t lanes() const { return 32; }
  __device__ int32_t first_diagonal() const { return 1 + lane_; }
  __device__ int32_t diagonal_stride() const { return 32; }
  __device__ uint32_t max(uint32_t x) const {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const uint32_t other = __shfl_xor_sync(0xffffffffu, x, offset);
      x = other > x ? other : x;
    }
    return x;
  }
  __device__ double sum(double x) const {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
  }
  __device__ void sync() const { __syncwarp(); }
};

constexpr int kDPWarpsPerBlock = 4;

// Shared-memory bytes of one warp: base values (double), base far keys (uint32), base counts and
// run symbols (int16), then the q, k, v symbols (uint8); rounded so the next warp's doubles stay
// aligned.
__host__ __device__ int64_t dp_shared_per_warp(int64_t T) { return (19 * T + 15) / 16 * 16; }

template <int N, typename scalar_t>
__global__ void dp_flip_kernel(const int64_t* __restrict__ q, const int64_t* __restrict__ k,
                               const int64_t* __restrict__ v, const scalar_t* __restrict__ val,
                               int64_t S, int32_t T, int32_t bits, int32_t window, bool token,
                               scalar_t* dq, scalar_t* dk, scalar_t* dv) {
  extern __shared__ __align__(16) unsigned char dp_shared[];
  const int32_t warp_in_block = threadIdx.x / 32;
  unsigned char* mine = dp_shared + warp_in_block * dp_shared_per_warp(T);
  const DPScratch scratch{reinterpret_cast<double*>(mine),
                          reinterpret_cast<uint32_t*>(mine + 8 * T),
                          reinterpret_cast<int16_t*>(mine + 12 * T),
                          reinterpret_cast<int16_t*>(mine + 14 * T)};
  uint8_t* qs = mine + 16 * T;
  uint8_t* ks = qs + T;
  uint8_t* vs = ks + T;
  const DeviceWarp warp{(int32_t)(threadIdx.x & 31)};
  const int64_t table = ((int64_t)1 << bits) + 1;
  const int64_t warps = (int64_t)gridDim.x * kDPWarpsPerBlock;
  for (int64_t s = (int64_t)blockIdx.x * kDPWarpsPerBlock + warp_in_block; s < S; s += warps) {
    for (int32_t i = warp.lane(); i < T; i += 32) {
      qs[i] = (uint8_t)q[s * T + i];
      ks[i] = (uint8_t)k[s * T + i];
      vs[i] = (uint8_t)v[s * T + i];
    }
    __syncwarp();
    const int64_t off = s * T * bits;
    dp_flip_stream<N>(warp, qs, ks, vs, val + s * T * table, T, bits, window, token,
                      dq != nullptr ? dq + off : nullptr, dk != nullptr ? dk + off : nullptr,
                      dv != nullptr ? dv + off : nullptr, scratch);
    __syncwarp();
  }
}

template <int N, typename scalar_t>
cudaError_t launch_dp(const int64_t* q, const int64_t* k, const int64_t* v, const scalar_t* val,
                      int64_t S, int64_t T, int bits, int64_t window, bool token, scalar_t* dq,
                      scalar_t* dk, scalar_t* dv, cudaStream_t stream) {
  const int64_t wanted = (S + kDPWarpsPerBlock - 1) / kDPWarpsPerBlock;
  const int64_t blocks = wanted < 65535 ? wanted : 65535;
  const size_t shared = (size_t)(kDPWarpsPerBlock * dp_shared_per_warp(T));
  dp_flip_kernel<N, scalar_t><<<(unsigned)blocks, kDPWarpsPerBlock * 32, shared, stream>>>(
      q, k, v, val, S, (int32_t)T, bits, (int32_t)window, token, dq, dk, dv);
  return cudaGetLastError();
}

// Diagonals per lane: the smallest N with 32 * N >= T (the largest diagonal is T - 1).
template <typename scalar_t>
cudaError_t launch_dp_for_length(const int64_t* q, const int64_t* k, const int64_t* v,
                                 const scalar_t* val, int64_t S, int64_t T, int bits,
                                 int64_t window, bool token, scalar_t* dq, scalar_t* dk,
                                 scalar_t* dv, cudaStream_t stream) {
  if (T <= 32) return launch_dp<1>(q, k, v, val, S, T, bits, window, token, dq, dk, dv, stream);
  if (T <= 64) return launch_dp<2>(q, k, v, val, S, T, bits, window, token, dq, dk, dv, stream);
  if (T <= 128) return launch_dp<4>(q, k, v, val, S, T, bits, window, token, dq, dk, dv, stream);
  if (T <= 256) return launch_dp<8>(q, k, v, val, S, T, bits, window, token, dq, dk, dv, stream);
  return launch_dp<16>(q, k, v, val, S, T, bits, window, token, dq, dk, dv, stream);
}

int64_t blocks_for(int64_t workers) { return (workers + kThreads - 1) / kThreads; }

}  // namespace

// int32 elements of scratch one worker needs (0: the DP kernel needs none).
int64_t flip_scratch_per_worker(int64_t T, int bits) {
  if (T <= kDPMaxLength) return 0;
  return automaton_states(T) * ((int64_t(1) << bits) + 3);
}

// Runs the estimator. `workers` must be a multiple of 128 threads' worth of scratch slots
// (scratch holds workers * flip_scratch_per_worker(T, bits) int32); `retrieved` [S*T] int32 and
// `base_value` [S*T] double are temporaries. dq/dk/dv: [S, T, bits] (dv zero-filled) or null.
// token: q = k = v (one flip changes all three; result in dq).
template <typename scalar_t>
cudaError_t launch_rosa_flip(const int64_t* q, const int64_t* k, const int64_t* v,
                             const scalar_t* val, int64_t S, int64_t T, int bits, int64_t window,
                             bool token, scalar_t* dq, scalar_t* dk, scalar_t* dv,
                             int32_t* scratch, int64_t workers, int32_t* retrieved,
                             double* base_value, cudaStream_t stream) {
  if (S == 0 || T == 0) return cudaSuccess;
  if (T <= kDPMaxLength) {
    if (window <= 0 || window > T) window = T;
    if (token) {
      dk = nullptr;
      dv = nullptr;
    }
    return launch_dp_for_length<scalar_t>(q, token ? q : k, token ? q : v, val, S, T, bits,
                                          window, token, dq, dk, dv, stream);
  }
  const int64_t base_workers = workers < S ? workers : S;
  base_kernel<scalar_t><<<blocks_for(base_workers), kThreads, 0, stream>>>(
      q, k, v, val, S, T, bits, scratch, base_workers, retrieved, base_value, dv);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  int first_target, num_targets;
  if (token) {
    first_target = 0;
    num_targets = 1;
  } else if (dq != nullptr && dk != nullptr) {
    first_target = 1;
    num_targets = 2;
  } else if (dq != nullptr) {
    first_target = 1;
    num_targets = 1;
  } else if (dk != nullptr) {
    first_target = 2;
    num_targets = 1;
  } else {
    return cudaSuccess;
  }
  const int64_t tasks = S * num_targets * T * bits;
  const int64_t flip_workers = workers < tasks ? workers : tasks;
  flip_kernel<scalar_t><<<blocks_for(flip_workers), kThreads, 0, stream>>>(
      q, k, v, val, base_value, S, T, bits, window, first_target, num_targets, scratch,
      flip_workers, dq, dk);
  return cudaGetLastError();
}

cudaError_t launch_rosa_retrieval(const int64_t* q, const int64_t* k, int64_t S, int64_t T,
                                  int32_t alphabet, int32_t* scratch, int64_t workers,
                                  int64_t* out, cudaStream_t stream) {
  if (S == 0 || T == 0) return cudaSuccess;
  const int64_t used = workers < S ? workers : S;
  retrieval_kernel<<<blocks_for(used), kThreads, 0, stream>>>(q, k, S, T, alphabet, scratch,
                                                               used, out);
  return cudaGetLastError();
}

template cudaError_t launch_rosa_flip<float>(const int64_t*, const int64_t*, const int64_t*,
                                             const float*, int64_t, int64_t, int, int64_t, bool,
                                             float*, float*, float*, int32_t*, int64_t, int32_t*,
                                             double*, cudaStream_t);
template cudaError_t launch_rosa_flip<double>(const int64_t*, const int64_t*, const int64_t*,
                                              const double*, int64_t, int64_t, int, int64_t, bool,
                                              double*, double*, double*, int32_t*, int64_t,
                                              int32_t*, double*, cudaStream_t);

}  // namespace heron_rosa_flip
