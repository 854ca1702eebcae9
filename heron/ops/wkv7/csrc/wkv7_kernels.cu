// WKV7 forward and backward: one block per (batch, head), sequential over time.
//
// Forward: rows of the state (value indices) live in the registers of a few adjacent lanes, so
// S_{t-1} a_t and y_t = S_t r_t are short dot products finished with warp shuffles; the step's
// r/decay/k/a/b vectors are staged in shared memory a whole segment at a time (barriers per
// segment, not per step), fetched from global memory one segment ahead. The state entering every
// segment (or every few segments) and the final state are saved for the backward passes together
// with S_{t-1} a_t. The split backward's first pass (state_gradient_kernel) has the same layout.
//
// Backward: lanes of group i own column i of the state (key index i) and both row i and column i
// of the state gradient G, which makes every per-step gradient a group-local reduction. S_{t-1}
// comes from the state after the segment by stepping backwards,
//   S_{t-1}[j][i] = (S_t[j][i] - (S_{t-1} a_t)_j b_i - v_j k_i) / d_i,
// using the saved S_{t-1} a_t, when that is well conditioned: rounding errors grow by 1/d_i per
// step, so a segment steps backwards only if every column's sum of -log d = exp(w) over the
// segment stays under `max_log_growth` (the model's own decay parametrisation keeps d >= 0.545).
// Otherwise (decay near zero, NaN, or max_log_growth <= 0) the segment recomputes S_{t-1} from the
// saved state entering it, never dividing by the decay. The choice is made per segment and is
// uniform over the block.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "wkv7.h"

namespace heron_wkv7 {
namespace {

template <typename T>
__device__ __forceinline__ float load(const T* p);
template <>
__device__ __forceinline__ float load<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }

template <typename T>
__device__ __forceinline__ void store(T* p, float x);
template <>
__device__ __forceinline__ void store<float>(float* p, float x) { *p = x; }
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float x) {
  *p = __float2bfloat16(x);
}
template <>
__device__ __forceinline__ void store<__half>(__half* p, float x) { *p = __float2half(x); }

// Each state row (forward) or column (backward) is split over kSplit adjacent lanes that each
// hold kPerThread of its elements (element e*kSplit + part), so a block has N / R * kSplit threads
// when a lane group holds R rows (columns). Dot products
// finish with a butterfly over the kSplit lanes. The backward's staged segment (9 vectors per
// step) stays under 48 KiB of shared memory.
template <int N>
struct Config {
  static constexpr int kSegment = N >= 128 ? 8 : 16;
  static constexpr int kPerThread = N >= 128 ? 32 : (N >= 64 ? 16 : 8);
  static constexpr int kSplit = N / kPerThread;
  // The backward recomputes S_{t-1} from the nearest of these sub-segment starts.
  static constexpr int kSubSegment = 4;
};

template <int Split>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int mask = Split / 2; mask >= 1; mask >>= 1) x += __shfl_xor_sync(0xffffffffu, x, mask);
  return x;
}

// Sums each of a lane's R partial sums over its group of S lanes (R <= S, powers of two) with
// R - 1 + log2(S / R) shuffles instead of R log2(S): at every level a lane keeps half of its values
// and adds its partner's half. Returns the total of row `part / (S / R)`, which the S / R lanes
// from `part / (S / R) * (S / R)` on all hold.
template <int R, int S>
__device__ __forceinline__ float reduce_scatter(const float (&partial)[R], int part) {
  static_assert(R <= S, "reduce_scatter: more rows than lanes");
  float x[R];
#pragma unroll
  for (int row = 0; row < R; ++row) x[row] = partial[row];
#pragma unroll
  for (int level = 0; (R >> level) > 1; ++level) {
    const int half = (R >> level) / 2, mask = S >> (level + 1);
    const bool upper = part & mask;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float keep = upper ? x[i + half] : x[i];
      const float send = upper ? x[i] : x[i + half];
      x[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
    }
  }
  float total = x[0];
#pragma unroll
  for (int mask = S / R / 2; mask >= 1; mask >>= 1) total += __shfl_xor_sync(0xffffffffu, total, mask);
  return total;
}

// Every row's total in every lane of the group, from reduce_scatter's (R shuffles).
template <int R, int S>
__device__ __forceinline__ void all_gather(float own_total, float (&totals)[R]) {
  if constexpr (R == 1) {
    totals[0] = own_total;
  } else {
#pragma unroll
    for (int row = 0; row < R; ++row) totals[row] = __shfl_sync(0xffffffffu, own_total, row * (S / R), S);
  }
}

__device__ __forceinline__ size_t vector_index(int batch, int t, int time, int heads, int head,
                                               int n, int c) {
  return ((static_cast<size_t>(batch) * time + t) * heads + head) * n + c;
}

// The forward may also give each lane group R adjacent rows: every staged step value a lane
// reads from shared memory then feeds R rows, which halves the shared-memory traffic per row at
// R = 2 (the forward is bound by it) for half the threads per block.
//
// At R = 4 a lane holds half as many keys (8 lanes per row at N = 64), which keeps the threads
// per block and halves the shared-memory reads per state element once more; the dot products then
// finish with reduce_scatter / all_gather, whose shuffle count grows with R only linearly.
template <int N, int R>
struct ForwardConfig {
  static constexpr int kPerThread = R >= 4 ? Config<N>::kPerThread / 2 : Config<N>::kPerThread;
  static constexpr int kSplit = N / kPerThread;
  static constexpr int kThreads = N / R * kSplit;
};

// A lane group's R adjacent rows of an [N, N] matrix, split over S lanes as the rows above (the
// element e of this lane is column e * S + part): loaded (zeros when `source` is null) and stored.
template <int N, int R, int E, int S>
__device__ __forceinline__ void load_rows(float (&rows)[R][E], const float* source, int part) {
#pragma unroll
  for (int row = 0; row < R; ++row)
#pragma unroll
    for (int e = 0; e < E; ++e) rows[row][e] = source ? source[row * N + e * S + part] : 0.f;
}

template <int N, int R, int E, int S>
__device__ __forceinline__ void store_rows(const float (&rows)[R][E], float* target, int part) {
#pragma unroll
  for (int row = 0; row < R; ++row)
#pragma unroll
    for (int e = 0; e < E; ++e) target[row * N + e * S + part] = rows[row][e];
}

// 16-byte pieces of a step vector, as floats.
template <typename T>
struct Piece {
  static constexpr int kValues = 16 / sizeof(T);
};

template <typename T>
__device__ __forceinline__ void unpack(const uint4& raw, float (&out)[Piece<T>::kValues]);
template <>
__device__ __forceinline__ void unpack<float>(const uint4& raw, float (&out)[4]) {
  out[0] = __uint_as_float(raw.x);
  out[1] = __uint_as_float(raw.y);
  out[2] = __uint_as_float(raw.z);
  out[3] = __uint_as_float(raw.w);
}
template <>
__device__ __forceinline__ void unpack<__nv_bfloat16>(const uint4& raw, float (&out)[8]) {
  const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // a bfloat16 is the upper half of a float32
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}
template <>
__device__ __forceinline__ void unpack<__half>(const uint4& raw, float (&out)[8]) {
  const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 pair = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
    out[2 * i] = pair.x;
    out[2 * i + 1] = pair.y;
  }
}

// The step vectors the forward and the state-gradient pass read, one segment at a time: r, the
// decay (staged as exp(-exp(w))), k, a, b and one more (v or dy). `fetch` loads a segment into
// registers in 16-byte pieces (the binding hands over 16-byte aligned tensors) and `commit`
// writes them to shared memory as floats. A kernel fetches the next segment right after committing
// the current one, so the loads run during the current segment's steps instead of stalling the
// block between two barriers.
template <typename T, int L, int N, int kThreads>
struct SegmentStager {
  static constexpr int kVectors = 6, kDecay = 1;
  static constexpr int kValues = Piece<T>::kValues;
  static constexpr int kPiecesPerStep = N / kValues;
  static constexpr int kPieces = L * kPiecesPerStep;
  static constexpr int kPerThread = (kPieces + kThreads - 1) / kThreads;
  static_assert(N % kValues == 0, "SegmentStager: a step vector must be whole 16-byte pieces");

  const T* sources[kVectors];
  uint4 pieces[kVectors][kPerThread];

  __device__ __forceinline__ void fetch(int t0, int length, int time, int heads, int batch, int head) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int piece = threadIdx.x + i * kThreads, step = piece / kPiecesPerStep;
      if (piece < kPieces && step < length) {
        const size_t index =
            vector_index(batch, t0 + step, time, heads, head, N, piece % kPiecesPerStep * kValues);
#pragma unroll
        for (int vector = 0; vector < kVectors; ++vector)
          pieces[vector][i] = __ldg(reinterpret_cast<const uint4*>(sources[vector] + index));
      }
    }
  }

  __device__ __forceinline__ void commit(float (&staged)[kVectors][L][N], int length) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int piece = threadIdx.x + i * kThreads, step = piece / kPiecesPerStep;
      if (piece < kPieces && step < length) {
        const int column = piece % kPiecesPerStep * kValues;
#pragma unroll
        for (int vector = 0; vector < kVectors; ++vector) {
          float values[kValues];
          unpack<T>(pieces[vector][i], values);
          if (vector == kDecay) {
#pragma unroll
            for (int e = 0; e < kValues; ++e) values[e] = __expf(-__expf(values[e]));
          }
#pragma unroll
          for (int e = 0; e < kValues; e += 4)
            *reinterpret_cast<float4*>(&staged[vector][step][column + e]) =
                make_float4(values[e], values[e + 1], values[e + 2], values[e + 3]);
        }
      }
    }
  }
};

template <typename T, int N, int R>
__global__ void __launch_bounds__(ForwardConfig<N, R>::kThreads) forward_kernel(
    int time, int heads, const T* __restrict__ r, const T* __restrict__ w, const T* __restrict__ k,
    const T* __restrict__ v, const T* __restrict__ a, const T* __restrict__ b,
    const float* __restrict__ initial_state, T* __restrict__ y, float* __restrict__ final_state,
    float* __restrict__ removal, float* __restrict__ checkpoints, int checkpoint_stride) {
  constexpr int L = Config<N>::kSegment;
  constexpr int E = ForwardConfig<N, R>::kPerThread, S = ForwardConfig<N, R>::kSplit;
  constexpr int kThreads = ForwardConfig<N, R>::kThreads;
  const int bh = blockIdx.x;
  const int batch = bh / heads;
  const int head = bh % heads;
  const int tid = threadIdx.x;
  const int first_row = tid / S * R;  // state rows (value indices) first_row .. first_row + R - 1
  const int part = tid % S;           // this lane holds keys e * S + part
  // after reduce_scatter, the row whose totals this lane holds, and whether it writes them out
  const int own_row = first_row + part / (S / R);
  const bool writes_row = part % (S / R) == 0;

  using Stager = SegmentStager<T, L, N, kThreads>;
  __shared__ __align__(16) float staged[Stager::kVectors][L][N];
  float(&s_r)[L][N] = staged[0];
  float(&s_d)[L][N] = staged[Stager::kDecay];
  float(&s_k)[L][N] = staged[2];
  float(&s_a)[L][N] = staged[3];
  float(&s_b)[L][N] = staged[4];
  float(&s_v)[L][N] = staged[5];
  Stager stager{{r, w, k, a, b, v}};

  float state[R][E];
  const size_t state_rows = (static_cast<size_t>(bh) * N + first_row) * N;
  load_rows<N, R, E, S>(state, initial_state ? initial_state + state_rows : nullptr, part);
  auto save_state = [&](float* saved) { store_rows<N, R, E, S>(state, saved, part); };

  const int num_segments = (time + L - 1) / L;
  // a saved state every checkpoint_stride segments, and the final state in the last slot
  const int num_slots = (num_segments + checkpoint_stride - 1) / checkpoint_stride + 1;
  stager.fetch(0, min(L, time), time, heads, batch, head);
  for (int segment = 0; segment < num_segments; ++segment) {
    const int t0 = segment * L;
    const int length = min(L, time - t0);
    if (checkpoints && segment % checkpoint_stride == 0)
      save_state(checkpoints + (static_cast<size_t>(bh) * num_slots + segment / checkpoint_stride) * N * N +
                 first_row * N);
    __syncthreads();  // the previous segment is done reading shared memory
    stager.commit(staged, length);
    __syncthreads();
    if (segment + 1 < num_segments) stager.fetch(t0 + L, min(L, time - t0 - L), time, heads, batch, head);
    for (int s = 0; s < length; ++s) {
      float sa[R], out[R], value[R];
#pragma unroll
      for (int row = 0; row < R; ++row) {
        sa[row] = 0.f;
        out[row] = 0.f;
        value[row] = s_v[s][first_row + row];
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const float ae = s_a[s][e * S + part];
#pragma unroll
        for (int row = 0; row < R; ++row) sa[row] += state[row][e] * ae;
      }
      const float own_sa = reduce_scatter<R, S>(sa, part);
      all_gather<R, S>(own_sa, sa);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int c = e * S + part;
        const float de = s_d[s][c], be = s_b[s][c], ke = s_k[s][c], re = s_r[s][c];
#pragma unroll
        for (int row = 0; row < R; ++row) {
          state[row][e] = state[row][e] * de + sa[row] * be + value[row] * ke;
          out[row] += state[row][e] * re;
        }
      }
      const float own_out = reduce_scatter<R, S>(out, part);
      if (writes_row) {
        const size_t index = vector_index(batch, t0 + s, time, heads, head, N, own_row);
        store(y + index, own_out);
        if (removal) removal[index] = own_sa;
      }
    }
  }
  save_state(final_state + state_rows);
  // the state after the last segment, where the backward starts stepping back
  if (checkpoints)
    save_state(checkpoints + (static_cast<size_t>(bh) * num_slots + num_slots - 1) * N * N + first_row * N);
}

// Pass 1 of the split backward (heron/ops/wkv7/split_backward.py): the gradient of the state, G,
// backwards through time, laid out like the forward's state (row i = value index i in a lane
// group's registers; rows never interact). Per step, with G holding the gradient from the later
// steps: G += dy_t r_t^T; gb_t = G b_t and dv_t = G k_t are written out; G = G diag(d_t) + gb_t a_t^T.
// G entering the last step of every chunk of chunk_segments segments is saved (future_grads
// [B, H, num_chunks, N, N]) for the chunk-parallel pass.
template <typename T, int N, int R>
__global__ void __launch_bounds__(ForwardConfig<N, R>::kThreads) state_gradient_kernel(
    int time, int heads, int chunk_segments, const T* __restrict__ r, const T* __restrict__ w,
    const T* __restrict__ k, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ grad_y,
    const float* __restrict__ grad_final_state, float* __restrict__ grad_b_dot, T* __restrict__ grad_v,
    float* __restrict__ future_grads, float* __restrict__ grad_initial_state) {
  constexpr int L = Config<N>::kSegment;
  constexpr int E = ForwardConfig<N, R>::kPerThread, S = ForwardConfig<N, R>::kSplit;
  constexpr int kThreads = ForwardConfig<N, R>::kThreads;
  const int bh = blockIdx.x;
  const int batch = bh / heads;
  const int head = bh % heads;
  const int tid = threadIdx.x;
  const int first_row = tid / S * R;
  const int part = tid % S;
  const int own_row = first_row + part / (S / R);  // as in forward_kernel
  const bool writes_row = part % (S / R) == 0;

  using Stager = SegmentStager<T, L, N, kThreads>;
  __shared__ __align__(16) float staged[Stager::kVectors][L][N];
  float(&s_r)[L][N] = staged[0];
  float(&s_d)[L][N] = staged[Stager::kDecay];
  float(&s_k)[L][N] = staged[2];
  float(&s_a)[L][N] = staged[3];
  float(&s_b)[L][N] = staged[4];
  float(&s_dy)[L][N] = staged[5];
  Stager stager{{r, w, k, a, b, grad_y}};

  float grad[R][E];
  const size_t state_rows = (static_cast<size_t>(bh) * N + first_row) * N;
  load_rows<N, R, E, S>(grad, grad_final_state ? grad_final_state + state_rows : nullptr, part);
  auto save_grad = [&](float* saved) { store_rows<N, R, E, S>(grad, saved, part); };

  const int num_segments = (time + L - 1) / L;
  const int num_chunks = (num_segments + chunk_segments - 1) / chunk_segments;
  stager.fetch((num_segments - 1) * L, time - (num_segments - 1) * L, time, heads, batch, head);
  for (int segment = num_segments - 1; segment >= 0; --segment) {
    const int t0 = segment * L;
    const int length = min(L, time - t0);
    if (segment == num_segments - 1 || (segment + 1) % chunk_segments == 0)  // a chunk's last segment
      save_grad(future_grads + (static_cast<size_t>(bh) * num_chunks + segment / chunk_segments) * N * N +
                first_row * N);
    __syncthreads();  // the previous segment is done reading shared memory
    stager.commit(staged, length);
    __syncthreads();
    if (segment > 0) stager.fetch(t0 - L, L, time, heads, batch, head);
    for (int s = length - 1; s >= 0; --s) {
      float dy[R], gb[R], dv[R];
#pragma unroll
      for (int row = 0; row < R; ++row) {
        dy[row] = s_dy[s][first_row + row];
        gb[row] = 0.f;
        dv[row] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int c = e * S + part;
        const float re = s_r[s][c], be = s_b[s][c], ke = s_k[s][c];
#pragma unroll
        for (int row = 0; row < R; ++row) {
          grad[row][e] += dy[row] * re;
          gb[row] += grad[row][e] * be;
          dv[row] += grad[row][e] * ke;
        }
      }
      const float own_gb = reduce_scatter<R, S>(gb, part), own_dv = reduce_scatter<R, S>(dv, part);
      all_gather<R, S>(own_gb, gb);
      if (writes_row) {
        const size_t index = vector_index(batch, t0 + s, time, heads, head, N, own_row);
        grad_b_dot[index] = own_gb;
        store(grad_v + index, own_dv);
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int c = e * S + part;
        const float de = s_d[s][c], ae = s_a[s][c];
#pragma unroll
        for (int row = 0; row < R; ++row) grad[row][e] = grad[row][e] * de + gb[row] * ae;
      }
    }
  }
  save_grad(grad_initial_state + state_rows);
}

// The backward may give each lane group R adjacent columns (R = 2 for N = 32 and 64): the
// per-step values a lane reads from shared memory then serve both columns.
template <int N, int R>
struct BackwardConfig {
  static constexpr int kThreads = N / R * Config<N>::kSplit;
};

template <typename T, int N, int R>
__global__ void __launch_bounds__(BackwardConfig<N, R>::kThreads) backward_kernel(
    int time, int heads, float max_log_growth, const T* __restrict__ r, const T* __restrict__ w,
    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ a, const T* __restrict__ b,
    const float* __restrict__ removal, const float* __restrict__ checkpoints,
    const T* __restrict__ grad_y, const float* __restrict__ grad_final_state, T* __restrict__ grad_r,
    T* __restrict__ grad_w, T* __restrict__ grad_k, T* __restrict__ grad_v, T* __restrict__ grad_a,
    T* __restrict__ grad_b, float* __restrict__ grad_initial_state) {
  constexpr int L = Config<N>::kSegment, E = Config<N>::kPerThread, S = Config<N>::kSplit;
  constexpr int kThreads = BackwardConfig<N, R>::kThreads, kSub = Config<N>::kSubSegment;
  constexpr int kWarps = (kThreads + 31) / 32;
  const int bh = blockIdx.x;
  const int batch = bh / heads;
  const int head = bh % heads;
  const int tid = threadIdx.x;
  const int first = tid / S * R;  // state columns (key indices) and gradient rows first .. first + R - 1
  const int part = tid % S;       // this lane holds elements e * S + part

  __shared__ float s_r[L][N], s_ew[L][N], s_d[L][N], s_k[L][N], s_v[L][N], s_a[L][N], s_b[L][N],
      s_sa[L][N], s_dy[L][N];
  // G_t b_t, double-buffered by step parity so one barrier per step suffices: a lane cannot
  // rewrite a buffer before every lane has passed the next step's barrier, i.e. finished reading it.
  __shared__ float s_gb[2][N];
  // Per step: (S_{t-1} a_t) . dy_t and v_t . dy_t, the same for every column.
  __shared__ float s_removal_dy[L], s_value_dy[L];

  // With j = e * S + part and i = first + c: grad_col[c][e] = G[j][i], grad_row[c][e] = G[i][j],
  // state_col[c][e] = S[j][i].
  float grad_col[R][E], grad_row[R][E], state_col[R][E];
  const float* grad_final = grad_final_state + static_cast<size_t>(bh) * N * N;
#pragma unroll
  for (int c = 0; c < R; ++c)
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int j = e * S + part, i = first + c;
      grad_col[c][e] = grad_final_state ? grad_final[j * N + i] : 0.f;
      grad_row[c][e] = grad_final_state ? grad_final[i * N + j] : 0.f;
    }

  const int num_segments = (time + L - 1) / L;
  for (int segment = num_segments - 1; segment >= 0; --segment) {
    const int t0 = segment * L;
    const int length = min(L, time - t0);
    __syncthreads();
    for (int flat = tid; flat < length * N; flat += kThreads) {
      const int s = flat / N, c = flat % N;
      const size_t index = vector_index(batch, t0 + s, time, heads, head, N, c);
      const float ew = __expf(load(w + index));
      s_r[s][c] = load(r + index);
      s_ew[s][c] = ew;
      s_d[s][c] = __expf(-ew);
      s_k[s][c] = load(k + index);
      s_v[s][c] = load(v + index);
      s_a[s][c] = load(a + index);
      s_b[s][c] = load(b + index);
      s_sa[s][c] = removal[index];
      s_dy[s][c] = load(grad_y + index);
    }
    __syncthreads();
    {
      const int warp = tid / 32, lane = tid % 32;
      for (int s = warp; s < length; s += kWarps) {
        float removal_dy = 0.f, value_dy = 0.f;
        for (int c = lane; c < N; c += 32) {
          removal_dy += s_sa[s][c] * s_dy[s][c];
          value_dy += s_v[s][c] * s_dy[s][c];
        }
#pragma unroll
        for (int mask = 16; mask >= 1; mask >>= 1) {
          removal_dy += __shfl_xor_sync(0xffffffffu, removal_dy, mask);
          value_dy += __shfl_xor_sync(0xffffffffu, value_dy, mask);
        }
        if (lane == 0) {
          s_removal_dy[s] = removal_dy;
          s_value_dy[s] = value_dy;
        }
      }
    }
    // Stepping backwards multiplies a column's rounding errors by exp(sum of exp(w)) over the
    // segment; `!(x <= bound)` also catches NaN and infinite decay rates.
    bool ill_conditioned = false;
    for (int c = tid; c < N; c += kThreads) {
      float growth = 0.f;
      for (int s = 0; s < length; ++s) growth += s_ew[s][c];
      ill_conditioned = ill_conditioned || !(growth <= max_log_growth);
    }
    const bool step_back = !__syncthreads_or(ill_conditioned);  // also publishes s_*_dy

    // One step of the gradient recurrence; state_col holds columns first.. of S_{t-1}.
    auto gradient_step = [&](int s) {
      // G_t += dy_t r_t^T
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int j = e * S + part;
        const float dyj = s_dy[s][j], rj = s_r[s][j];
#pragma unroll
        for (int c = 0; c < R; ++c) {
          grad_col[c][e] += dyj * s_r[s][first + c];
          grad_row[c][e] += s_dy[s][first + c] * rj;
        }
      }

      float gb[R], dv[R];
#pragma unroll
      for (int c = 0; c < R; ++c) gb[c] = dv[c] = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int j = e * S + part;
        const float bj = s_b[s][j], kj = s_k[s][j];
#pragma unroll
        for (int c = 0; c < R; ++c) {
          gb[c] += grad_row[c][e] * bj;
          dv[c] += grad_row[c][e] * kj;
        }
      }
      float* gb_all = s_gb[s & 1];
#pragma unroll
      for (int c = 0; c < R; ++c) {
        gb[c] = group_sum<S>(gb[c]);
        dv[c] = group_sum<S>(dv[c]);
        if (part == 0) gb_all[first + c] = gb[c];
      }
      __syncthreads();

      float state_dy[R], dd[R], dk[R], da[R], db[R];
#pragma unroll
      for (int c = 0; c < R; ++c) state_dy[c] = dd[c] = dk[c] = da[c] = db[c] = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int j = e * S + part;
        const float dyj = s_dy[s][j], vj = s_v[s][j], gbj = gb_all[j], saj = s_sa[s][j];
#pragma unroll
        for (int c = 0; c < R; ++c) {
          state_dy[c] += state_col[c][e] * dyj;
          dd[c] += grad_col[c][e] * state_col[c][e];
          dk[c] += grad_col[c][e] * vj;
          da[c] += state_col[c][e] * gbj;
          db[c] += grad_col[c][e] * saj;
        }
      }
#pragma unroll
      for (int c = 0; c < R; ++c) {
        state_dy[c] = group_sum<S>(state_dy[c]);
        dd[c] = group_sum<S>(dd[c]);
        dk[c] = group_sum<S>(dk[c]);
        da[c] = group_sum<S>(da[c]);
        db[c] = group_sum<S>(db[c]);
      }
      if (part == 0) {
#pragma unroll
        for (int c = 0; c < R; ++c) {
          const int i = first + c;
          const float di = s_d[s][i];
          // y_t = S_t r_t with S_t[j][i] = S_{t-1}[j][i] d_i + sa_j b_i + v_j k_i.
          const float dr = di * state_dy[c] + s_b[s][i] * s_removal_dy[s] + s_k[s][i] * s_value_dy[s];
          // d = exp(-exp(w)) so dd/dw = -exp(w) d.
          const float dw = -dd[c] * di * s_ew[s][i];
          const size_t index = vector_index(batch, t0 + s, time, heads, head, N, i);
          store(grad_r + index, dr);
          store(grad_w + index, dw);
          store(grad_k + index, dk[c]);
          store(grad_v + index, dv[c]);
          store(grad_a + index, da[c]);
          store(grad_b + index, db[c]);
        }
      }

      // G_{t-1} (from the future) = G_t (diag(d) + a b^T)^T
      float di[R], ai[R];
#pragma unroll
      for (int c = 0; c < R; ++c) {
        di[c] = s_d[s][first + c];
        ai[c] = s_a[s][first + c];
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int j = e * S + part;
        const float gbj = gb_all[j], dj = s_d[s][j], aj = s_a[s][j];
#pragma unroll
        for (int c = 0; c < R; ++c) {
          grad_col[c][e] = grad_col[c][e] * di[c] + gbj * ai[c];
          grad_row[c][e] = grad_row[c][e] * dj + gb[c] * aj;
        }
      }
    };

    if (step_back) {
      // Columns of the state after the segment: the next segment's saved entry state (the final
      // state for the last segment).
      const float* after = checkpoints + (static_cast<size_t>(bh) * (num_segments + 1) + segment + 1) * N * N;
#pragma unroll
      for (int c = 0; c < R; ++c)
#pragma unroll
        for (int e = 0; e < E; ++e) state_col[c][e] = after[(e * S + part) * N + first + c];
      for (int s = length - 1; s >= 0; --s) {
        float inverse_decay[R], bi[R], ki[R];
#pragma unroll
        for (int c = 0; c < R; ++c) {
          inverse_decay[c] = __expf(s_ew[s][first + c]);
          bi[c] = s_b[s][first + c];
          ki[c] = s_k[s][first + c];
        }
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          const float saj = s_sa[s][j], vj = s_v[s][j];
#pragma unroll
          for (int c = 0; c < R; ++c)
            state_col[c][e] = (state_col[c][e] - saj * bi[c] - vj * ki[c]) * inverse_decay[c];
        }
        gradient_step(s);
      }
    } else {
      const float* saved = checkpoints + (static_cast<size_t>(bh) * (num_segments + 1) + segment) * N * N;
      // Columns of S_{t-1} rebuilt from the saved segment start: first the start of each
      // sub-segment, then each step from its sub-segment start.
      auto advance = [&](float (&columns)[R][E], int q) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          const float saj = s_sa[q][j], vj = s_v[q][j];
#pragma unroll
          for (int c = 0; c < R; ++c) {
            const int i = first + c;
            columns[c][e] = columns[c][e] * s_d[q][i] + saj * s_b[q][i] + vj * s_k[q][i];
          }
        }
      };
      float base[R][E];
      const int num_sub = (length + kSub - 1) / kSub;
      for (int sub = num_sub - 1; sub >= 0; --sub) {
#pragma unroll
        for (int c = 0; c < R; ++c)
#pragma unroll
          for (int e = 0; e < E; ++e) base[c][e] = saved[(e * S + part) * N + first + c];
        for (int q = 0; q < sub * kSub; ++q) advance(base, q);
        const int last = min(length, (sub + 1) * kSub) - 1;
        for (int s = last; s >= sub * kSub; --s) {
#pragma unroll
          for (int c = 0; c < R; ++c)
#pragma unroll
            for (int e = 0; e < E; ++e) state_col[c][e] = base[c][e];
          for (int q = sub * kSub; q < s; ++q) advance(state_col, q);
          gradient_step(s);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < R; ++c) {
    float* out = grad_initial_state + (static_cast<size_t>(bh) * N + first + c) * N;
#pragma unroll
    for (int e = 0; e < E; ++e) out[e * S + part] = grad_row[c][e];
  }
}

template <typename T, int N>
int forward_typed(int batch, int time, int heads, int rows_per_thread, int checkpoint_stride, const void* r,
                  const void* w, const void* k, const void* v, const void* a, const void* b,
                  const float* initial_state, void* y, float* final_state, float* removal,
                  float* checkpoints, cudaStream_t stream) {
  auto launch = [&](auto kernel, int threads) {
    kernel<<<batch * heads, threads, 0, stream>>>(
        time, heads, static_cast<const T*>(r), static_cast<const T*>(w), static_cast<const T*>(k),
        static_cast<const T*>(v), static_cast<const T*>(a), static_cast<const T*>(b), initial_state,
        static_cast<T*>(y), final_state, removal, checkpoints, checkpoint_stride);
  };
  // Four rows per lane group take half-width lanes (ForwardConfig), so they fit N = 128 too; two
  // rows with full-width lanes: N = 16 would fall under one warp, N = 128 would use every register.
  if constexpr (N == 64 || N == 128) {
    if (rows_per_thread == 4) {
      launch(forward_kernel<T, N, 4>, ForwardConfig<N, 4>::kThreads);
      return static_cast<int>(cudaGetLastError());
    }
  }
  if constexpr (N == 32 || N == 64) {
    if (rows_per_thread >= 2) {
      launch(forward_kernel<T, N, 2>, ForwardConfig<N, 2>::kThreads);
      return static_cast<int>(cudaGetLastError());
    }
  }
  launch(forward_kernel<T, N, 1>, ForwardConfig<N, 1>::kThreads);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int N>
int backward_typed(int batch, int time, int heads, int columns_per_thread, float max_log_growth,
                   const void* r, const void* w, const void* k, const void* v, const void* a,
                   const void* b, const float* removal, const float* checkpoints, const void* grad_y,
                   const float* grad_final_state, void* grad_r, void* grad_w, void* grad_k,
                   void* grad_v, void* grad_a, void* grad_b, float* grad_initial_state,
                   cudaStream_t stream) {
  auto launch = [&](auto kernel, int threads) {
    kernel<<<batch * heads, threads, 0, stream>>>(
        time, heads, max_log_growth, static_cast<const T*>(r), static_cast<const T*>(w),
        static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(a),
        static_cast<const T*>(b), removal, checkpoints, static_cast<const T*>(grad_y), grad_final_state,
        static_cast<T*>(grad_r), static_cast<T*>(grad_w), static_cast<T*>(grad_k),
        static_cast<T*>(grad_v), static_cast<T*>(grad_a), static_cast<T*>(grad_b), grad_initial_state);
  };
  // Two columns per lane group: N = 16 would fall under one warp, N = 128 would spill.
  if constexpr (N == 32 || N == 64) {
    if (columns_per_thread == 2) {
      launch(backward_kernel<T, N, 2>, BackwardConfig<N, 2>::kThreads);
      return static_cast<int>(cudaGetLastError());
    }
  }
  launch(backward_kernel<T, N, 1>, BackwardConfig<N, 1>::kThreads);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int N>
int state_gradients_typed(int batch, int time, int heads, int rows_per_thread, int chunk_segments,
                          const void* r, const void* w, const void* k, const void* a, const void* b,
                          const void* grad_y, const float* grad_final_state, float* grad_b_dot, void* grad_v,
                          float* future_grads, float* grad_initial_state, cudaStream_t stream) {
  auto launch = [&](auto kernel, int threads) {
    kernel<<<batch * heads, threads, 0, stream>>>(
        time, heads, chunk_segments, static_cast<const T*>(r), static_cast<const T*>(w),
        static_cast<const T*>(k), static_cast<const T*>(a), static_cast<const T*>(b),
        static_cast<const T*>(grad_y), grad_final_state, grad_b_dot, static_cast<T*>(grad_v), future_grads,
        grad_initial_state);
  };
  if constexpr (N == 64 || N == 128) {
    if (rows_per_thread == 4) {
      launch(state_gradient_kernel<T, N, 4>, ForwardConfig<N, 4>::kThreads);
      return static_cast<int>(cudaGetLastError());
    }
  }
  if constexpr (N == 32 || N == 64) {
    if (rows_per_thread >= 2) {
      launch(state_gradient_kernel<T, N, 2>, ForwardConfig<N, 2>::kThreads);
      return static_cast<int>(cudaGetLastError());
    }
  }
  launch(state_gradient_kernel<T, N, 1>, ForwardConfig<N, 1>::kThreads);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int segment_length(int head_size) {
  switch (head_size) {
    case 16: return Config<16>::kSegment;
    case 32: return Config<32>::kSegment;
    case 64: return Config<64>::kSegment;
    case 128: return Config<128>::kSegment;
    default: return -1;
  }
}

bool head_size_supported(int head_size) { return segment_length(head_size) > 0; }

#define HERON_WKV7_DISPATCH(FN, ...)                                                   \
  do {                                                                                 \
    auto s = static_cast<cudaStream_t>(stream);                                        \
    switch (dtype) {                                                                   \
      case DType::kFloat32:                                                            \
        switch (head_size) {                                                           \
          case 16: return FN<float, 16>(__VA_ARGS__, s);                               \
          case 32: return FN<float, 32>(__VA_ARGS__, s);                               \
          case 64: return FN<float, 64>(__VA_ARGS__, s);                               \
          case 128: return FN<float, 128>(__VA_ARGS__, s);                             \
        }                                                                              \
        break;                                                                         \
      case DType::kBFloat16:                                                           \
        switch (head_size) {                                                           \
          case 16: return FN<__nv_bfloat16, 16>(__VA_ARGS__, s);                       \
          case 32: return FN<__nv_bfloat16, 32>(__VA_ARGS__, s);                       \
          case 64: return FN<__nv_bfloat16, 64>(__VA_ARGS__, s);                       \
          case 128: return FN<__nv_bfloat16, 128>(__VA_ARGS__, s);                     \
        }                                                                              \
        break;                                                                         \
      case DType::kFloat16:                                                            \
        switch (head_size) {                                                           \
          case 16: return FN<__half, 16>(__VA_ARGS__, s);                              \
          case 32: return FN<__half, 32>(__VA_ARGS__, s);                              \
          case 64: return FN<__half, 64>(__VA_ARGS__, s);                              \
          case 128: return FN<__half, 128>(__VA_ARGS__, s);                            \
        }                                                                              \
        break;                                                                         \
    }                                                                                  \
    return static_cast<int>(cudaErrorInvalidValue);                                    \
  } while (0)

int launch_forward(DType dtype, int batch, int time, int heads, int head_size, int rows_per_thread,
                   int checkpoint_stride, const void* r, const void* w, const void* k, const void* v,
                   const void* a, const void* b, const float* initial_state, void* y, float* final_state,
                   float* removal, float* checkpoints, void* stream) {
  if (batch * heads == 0) return 0;
  HERON_WKV7_DISPATCH(forward_typed, batch, time, heads, rows_per_thread, checkpoint_stride, r, w, k, v, a, b,
                      initial_state, y, final_state, removal, checkpoints);
}

int launch_state_gradients(DType dtype, int batch, int time, int heads, int head_size, int rows_per_thread,
                           int chunk_segments, const void* r, const void* w, const void* k, const void* a,
                           const void* b, const void* grad_y, const float* grad_final_state, float* grad_b_dot,
                           void* grad_v, float* future_grads, float* grad_initial_state, void* stream) {
  if (batch * heads == 0) return 0;
  HERON_WKV7_DISPATCH(state_gradients_typed, batch, time, heads, rows_per_thread, chunk_segments, r, w, k, a, b,
                      grad_y, grad_final_state, grad_b_dot, grad_v, future_grads, grad_initial_state);
}

int launch_backward(DType dtype, int batch, int time, int heads, int head_size,
                    int columns_per_thread, float max_log_growth, const void* r, const void* w,
                    const void* k, const void* v, const void* a, const void* b, const float* removal, const float* checkpoints, const void* grad_y,
                    const float* grad_final_state, void* grad_r, void* grad_w, void* grad_k,
                    void* grad_v, void* grad_a, void* grad_b, float* grad_initial_state,
                    void* stream) {
  if (batch * heads == 0) return 0;
  HERON_WKV7_DISPATCH(backward_typed, batch, time, heads, columns_per_thread, max_log_growth, r, w, k,
                      v, a, b, removal, checkpoints, grad_y, grad_final_state, grad_r, grad_w, grad_k, grad_v, grad_a, grad_b,
                      grad_initial_state);
}

}  // namespace heron_wkv7
