// WKV7 forward and backward: one block per (batch, head), sequential over time.
//
// Forward: row i of the state (value index i) lives in the registers of a few adjacent lanes, so
// S_{t-1} a_t and y_t = S_t r_t are short dot products finished with warp shuffles; the step's r/decay/k/a/b vectors are staged in
// shared memory a whole segment at a time (one barrier per segment, not per step). The state
// entering every segment is saved for the backward pass together with S_{t-1} a_t.
//
// Backward: lanes of group i own column i of the state (key index i) and both row i and column i
// of the state gradient G, which makes every per-step gradient a group-local reduction. S_{t-1}
// is recomputed inside the segment from the saved state (never by dividing by the decay, which
// may be arbitrarily close to zero), using the saved S_{t-1} a_t so the column recurrence needs
// no cross-thread reduction.
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
// hold kPerThread of its elements (element e*kSplit + part), so a block has N * kSplit threads:
// four times the parallelism of a thread-per-row layout and no register spills. Dot products
// finish with a butterfly over the kSplit lanes. The backward's staged segment (9 vectors per
// step) stays under 48 KiB of shared memory.
template <int N>
struct Config {
  static constexpr int kSegment = N >= 128 ? 8 : 16;
  static constexpr int kPerThread = N >= 128 ? 32 : (N >= 64 ? 16 : 8);
  static constexpr int kSplit = N / kPerThread;
  static constexpr int kThreads = N * kSplit;
  // The backward recomputes S_{t-1} from the nearest of these sub-segment starts.
  static constexpr int kSubSegment = 4;
};

template <int Split>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int mask = Split / 2; mask >= 1; mask >>= 1) x += __shfl_xor_sync(0xffffffffu, x, mask);
  return x;
}

__device__ __forceinline__ size_t vector_index(int batch, int t, int time, int heads, int head,
                                               int n, int c) {
  return ((static_cast<size_t>(batch) * time + t) * heads + head) * n + c;
}

template <typename T, int N>
__global__ void __launch_bounds__(Config<N>::kThreads) forward_kernel(
    int time, int heads, const T* __restrict__ r, const T* __restrict__ w, const T* __restrict__ k,
    const T* __restrict__ v, const T* __restrict__ a, const T* __restrict__ b,
    const float* __restrict__ initial_state, T* __restrict__ y, float* __restrict__ final_state,
    float* __restrict__ removal, float* __restrict__ checkpoints) {
  constexpr int L = Config<N>::kSegment, E = Config<N>::kPerThread, S = Config<N>::kSplit;
  constexpr int kThreads = Config<N>::kThreads;
  const int bh = blockIdx.x;
  const int batch = bh / heads;
  const int head = bh % heads;
  const int tid = threadIdx.x;
  const int i = tid / S;     // state row (value index)
  const int part = tid % S;  // this lane holds keys e * S + part

  __shared__ float s_r[L][N], s_d[L][N], s_k[L][N], s_a[L][N], s_b[L][N], s_v[L][N];

  float state[E];
  const size_t state_row = (static_cast<size_t>(bh) * N + i) * N;
#pragma unroll
  for (int e = 0; e < E; ++e) state[e] = initial_state ? initial_state[state_row + e * S + part] : 0.f;

  const int num_segments = (time + L - 1) / L;
  for (int segment = 0; segment < num_segments; ++segment) {
    const int t0 = segment * L;
    const int length = min(L, time - t0);
    if (checkpoints) {
      float* saved = checkpoints + (static_cast<size_t>(bh) * num_segments + segment) * N * N + i * N;
#pragma unroll
      for (int e = 0; e < E; ++e) saved[e * S + part] = state[e];
    }
    __syncthreads();  // the previous segment is done reading shared memory
    for (int flat = tid; flat < length * N; flat += kThreads) {
      const int s = flat / N, c = flat % N;
      const size_t index = vector_index(batch, t0 + s, time, heads, head, N, c);
      s_r[s][c] = load(r + index);
      s_d[s][c] = __expf(-__expf(load(w + index)));
      s_k[s][c] = load(k + index);
      s_a[s][c] = load(a + index);
      s_b[s][c] = load(b + index);
      s_v[s][c] = load(v + index);
    }
    __syncthreads();
    for (int s = 0; s < length; ++s) {
      float sa = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) sa += state[e] * s_a[s][e * S + part];
      sa = group_sum<S>(sa);
      const float vi = s_v[s][i];
      float out = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int c = e * S + part;
        state[e] = state[e] * s_d[s][c] + sa * s_b[s][c] + vi * s_k[s][c];
        out += state[e] * s_r[s][c];
      }
      out = group_sum<S>(out);
      if (part == 0) {
        const size_t index = vector_index(batch, t0 + s, time, heads, head, N, i);
        store(y + index, out);
        if (removal) removal[index] = sa;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) final_state[state_row + e * S + part] = state[e];
}

template <typename T, int N>
__global__ void __launch_bounds__(Config<N>::kThreads) backward_kernel(
    int time, int heads, const T* __restrict__ r, const T* __restrict__ w, const T* __restrict__ k,
    const T* __restrict__ v, const T* __restrict__ a, const T* __restrict__ b,
    const float* __restrict__ removal, const float* __restrict__ checkpoints,
    const T* __restrict__ grad_y, const float* __restrict__ grad_final_state, T* __restrict__ grad_r,
    T* __restrict__ grad_w, T* __restrict__ grad_k, T* __restrict__ grad_v, T* __restrict__ grad_a,
    T* __restrict__ grad_b, float* __restrict__ grad_initial_state) {
  constexpr int L = Config<N>::kSegment, E = Config<N>::kPerThread, S = Config<N>::kSplit;
  constexpr int kThreads = Config<N>::kThreads, kSub = Config<N>::kSubSegment;
  const int bh = blockIdx.x;
  const int batch = bh / heads;
  const int head = bh % heads;
  const int tid = threadIdx.x;
  const int i = tid / S;     // state column (key index) and gradient row
  const int part = tid % S;  // this lane holds elements e * S + part

  __shared__ float s_r[L][N], s_ew[L][N], s_d[L][N], s_k[L][N], s_v[L][N], s_a[L][N], s_b[L][N],
      s_sa[L][N], s_dy[L][N];
  __shared__ float s_gb[N];

  // With j = e * S + part: grad_col[e] = G[j][i], grad_row[e] = G[i][j], state_col[e] = S[j][i].
  float grad_col[E], grad_row[E], state_col[E], base[E];
  const float* grad_final = grad_final_state + static_cast<size_t>(bh) * N * N;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int j = e * S + part;
    grad_col[e] = grad_final_state ? grad_final[j * N + i] : 0.f;
    grad_row[e] = grad_final_state ? grad_final[i * N + j] : 0.f;
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
    const float* saved = checkpoints + (static_cast<size_t>(bh) * num_segments + segment) * N * N;

    // Column i of S_{t-1} is rebuilt from the saved segment start (never by dividing by the
    // decay): first the start of each sub-segment, then each step from its sub-segment start.
    auto advance = [&](float (&column)[E], int q) {
      const float dq = s_d[q][i], bq = s_b[q][i], kq = s_k[q][i];
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int j = e * S + part;
        column[e] = column[e] * dq + s_sa[q][j] * bq + s_v[q][j] * kq;
      }
    };

    const int num_sub = (length + kSub - 1) / kSub;
    for (int sub = num_sub - 1; sub >= 0; --sub) {
#pragma unroll
      for (int e = 0; e < E; ++e) base[e] = saved[(e * S + part) * N + i];
      for (int q = 0; q < sub * kSub; ++q) advance(base, q);
      const int last = min(length, (sub + 1) * kSub) - 1;
      for (int s = last; s >= sub * kSub; --s) {
#pragma unroll
        for (int e = 0; e < E; ++e) state_col[e] = base[e];
        for (int q = sub * kSub; q < s; ++q) advance(state_col, q);

        // G_t += dy_t r_t^T
        const float ri = s_r[s][i], dyi = s_dy[s][i];
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          grad_col[e] += s_dy[s][j] * ri;
          grad_row[e] += dyi * s_r[s][j];
        }

        float gb = 0.f, dv = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          gb += grad_row[e] * s_b[s][j];
          dv += grad_row[e] * s_k[s][j];
        }
        gb = group_sum<S>(gb);
        dv = group_sum<S>(dv);
        if (part == 0) s_gb[i] = gb;
        __syncthreads();

        float state_dy = 0.f, removal_dy = 0.f, value_dy = 0.f;
        float dd = 0.f, dk = 0.f, da = 0.f, db = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          const float dyj = s_dy[s][j], saj = s_sa[s][j], vj = s_v[s][j];
          state_dy += state_col[e] * dyj;
          removal_dy += saj * dyj;
          value_dy += vj * dyj;
          dd += grad_col[e] * state_col[e];
          dk += grad_col[e] * vj;
          da += state_col[e] * s_gb[j];
          db += grad_col[e] * saj;
        }
        state_dy = group_sum<S>(state_dy);
        removal_dy = group_sum<S>(removal_dy);
        value_dy = group_sum<S>(value_dy);
        dd = group_sum<S>(dd);
        dk = group_sum<S>(dk);
        da = group_sum<S>(da);
        db = group_sum<S>(db);
        const float di = s_d[s][i], bi = s_b[s][i], ki = s_k[s][i], ai = s_a[s][i];
        if (part == 0) {
          // y_t = S_t r_t with S_t[j][i] = S_{t-1}[j][i] d_i + sa_j b_i + v_j k_i.
          const float dr = di * state_dy + bi * removal_dy + ki * value_dy;
          // d = exp(-exp(w)) so dd/dw = -exp(w) d.
          const float dw = -dd * di * s_ew[s][i];
          const size_t index = vector_index(batch, t0 + s, time, heads, head, N, i);
          store(grad_r + index, dr);
          store(grad_w + index, dw);
          store(grad_k + index, dk);
          store(grad_v + index, dv);
          store(grad_a + index, da);
          store(grad_b + index, db);
        }

        // G_{t-1} (from the future) = G_t (diag(d) + a b^T)^T
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int j = e * S + part;
          grad_col[e] = grad_col[e] * di + s_gb[j] * ai;
          grad_row[e] = grad_row[e] * s_d[s][j] + gb * s_a[s][j];
        }
        __syncthreads();  // s_gb is rewritten by the next step
      }
    }
  }
  float* out = grad_initial_state + (static_cast<size_t>(bh) * N + i) * N;
#pragma unroll
  for (int e = 0; e < E; ++e) out[e * S + part] = grad_row[e];
}

template <typename T, int N>
int forward_typed(int batch, int time, int heads, const void* r, const void* w, const void* k,
                  const void* v, const void* a, const void* b, const float* initial_state, void* y,
                  float* final_state, float* removal, float* checkpoints, cudaStream_t stream) {
  forward_kernel<T, N><<<batch * heads, Config<N>::kThreads, 0, stream>>>(
      time, heads, static_cast<const T*>(r), static_cast<const T*>(w), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<const T*>(a), static_cast<const T*>(b), initial_state,
      static_cast<T*>(y), final_state, removal, checkpoints);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int N>
int backward_typed(int batch, int time, int heads, const void* r, const void* w, const void* k,
                   const void* v, const void* a, const void* b, const float* removal,
                   const float* checkpoints, const void* grad_y, const float* grad_final_state,
                   void* grad_r, void* grad_w, void* grad_k, void* grad_v, void* grad_a,
                   void* grad_b, float* grad_initial_state, cudaStream_t stream) {
  backward_kernel<T, N><<<batch * heads, Config<N>::kThreads, 0, stream>>>(
      time, heads, static_cast<const T*>(r), static_cast<const T*>(w), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<const T*>(a), static_cast<const T*>(b), removal,
      checkpoints, static_cast<const T*>(grad_y), grad_final_state, static_cast<T*>(grad_r),
      static_cast<T*>(grad_w), static_cast<T*>(grad_k), static_cast<T*>(grad_v),
      static_cast<T*>(grad_a), static_cast<T*>(grad_b), grad_initial_state);
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

int launch_forward(DType dtype, int batch, int time, int heads, int head_size, const void* r,
                   const void* w, const void* k, const void* v, const void* a, const void* b,
                   const float* initial_state, void* y, float* final_state, float* removal,
                   float* checkpoints, void* stream) {
  if (batch * heads == 0) return 0;
  HERON_WKV7_DISPATCH(forward_typed, batch, time, heads, r, w, k, v, a, b, initial_state, y,
                      final_state, removal, checkpoints);
}

int launch_backward(DType dtype, int batch, int time, int heads, int head_size, const void* r,
                    const void* w, const void* k, const void* v, const void* a, const void* b,
                    const float* removal, const float* checkpoints, const void* grad_y,
                    const float* grad_final_state, void* grad_r, void* grad_w, void* grad_k,
                    void* grad_v, void* grad_a, void* grad_b, float* grad_initial_state,
                    void* stream) {
  if (batch * heads == 0) return 0;
  HERON_WKV7_DISPATCH(backward_typed, batch, time, heads, r, w, k, v, a, b, removal, checkpoints,
                      grad_y, grad_final_state, grad_r, grad_w, grad_k, grad_v, grad_a, grad_b,
                      grad_initial_state);
}

}  // namespace heron_wkv7
