// CUDA ROSA by level-by-level grouping: one thread block per stream, the whole stream in shared
// memory, parallel within the stream. The algorithm is `rosa_qkv_grouping` of reference.py (read
// its docstring first); this file is its block-parallel form:
//
//   * the elements of a stream (token mode: one per position; QKV: query i and key i, query
//     first) live in one array ordered by group, and by time inside a group; a flag marks the
//     first element of every group;
//   * level d looks at the symbol d steps back. Its symbols are split bit by bit (highest bit
//     first), each bit a stable partition of every group into its 0- and 1-elements, computed by
//     one block-wide scan: kept elements before me (global), 0s and 1s before me in my group
//     (segmented) and my group's first rank (max); elements without history or in dead groups
//     are dropped on the way, so the array shrinks;
//   * after the level's last bit, a query with a key before it in its group matches with length
//     d + 1 and the nearest such key is the latest; groups without a matching query are marked
//     dead. The block stops when no query matched.
//
// Token streams with at most kMaxRuns runs of equal symbols skip the grouping: they are answered
// from their runs (answer_from_runs), linear in T on exactly the nearly constant streams whose
// long matches keep groups alive for many levels.
// Periodic streams keep every group alive for up to T levels (quadratic work), so after
// `work_per_element * n` element visits a stream is handed to the automaton kernel (rosa_cuda.cu)
// through a device-side flag; streams with a symbol above 255 go there at once. Constant streams
// are answered in closed form. No host synchronisation anywhere. No torch headers: `nvcc -c` compiles this file standalone.
#include <cuda_runtime.h>
#include <stdint.h>

#include "rosa_grouping.h"

namespace {

constexpr uint8_t kHead = 1;  // first element of its group
constexpr uint8_t kDead = 2;  // its group has no matching query: dropped by the next partition

// Scan value of one partition pass. Combined left (earlier ranks) to right.
struct PartitionValue {
  uint32_t group_counts;  // kept 0-elements + (kept 1-elements << 16), reset at group heads
  uint32_t head;          // 1 if a group starts here (segmented-sum flag)
  uint32_t kept;          // kept elements (plain sum)
  int32_t group_start;    // rank of the latest group head (max)
};

__device__ __forceinline__ PartitionValue combine(const PartitionValue& earlier,
                                                  const PartitionValue& later) {
  PartitionValue result;
  result.group_counts = later.head ? later.group_counts : earlier.group_counts + later.group_counts;
  result.head = earlier.head | later.head;
  result.kept = earlier.kept + later.kept;
  result.group_start = max(earlier.group_start, later.group_start);
  return result;
}

__device__ __forceinline__ PartitionValue shuffle_up(const PartitionValue& value, int delta) {
  PartitionValue result;
  result.group_counts = __shfl_up_sync(0xffffffffu, value.group_counts, delta);
  result.head = __shfl_up_sync(0xffffffffu, value.head, delta);
  result.kept = __shfl_up_sync(0xffffffffu, value.kept, delta);
  result.group_start = __shfl_up_sync(0xffffffffu, value.group_start, delta);
  return result;
}

// Scan value of a QKV detection: latest group head and latest key rank (both max).
struct DetectionValue {
  int32_t group_start;
  int32_t key_rank;
};

__device__ __forceinline__ DetectionValue combine(const DetectionValue& earlier,
                                                  const DetectionValue& later) {
  return DetectionValue{max(earlier.group_start, later.group_start),
                        max(earlier.key_rank, later.key_rank)};
}

__device__ __forceinline__ DetectionValue shuffle_up(const DetectionValue& value, int delta) {
  return DetectionValue{__shfl_up_sync(0xffffffffu, value.group_start, delta),
                        __shfl_up_sync(0xffffffffu, value.key_rank, delta)};
}

// Inclusive scan of one value per lane across a warp.
template <typename Value>
__device__ __forceinline__ Value warp_inclusive_scan(Value value, int lane) {
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const Value other = shuffle_up(value, offset);
    if (lane >= offset) value = combine(other, value);
  }
  return value;
}

// Exclusive block scan of one value per thread (each thread's total over its ranks). Returns
// the combination of every earlier thread's value; `*block_total` receives all of them. Needs
// blockDim.x a multiple of 32; ends with a barrier so `scratch` can be reused at once.
template <typename Value>
__device__ Value block_exclusive_scan(Value mine, const Value identity, Value* scratch,
                                      Value* block_total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const Value inclusive = warp_inclusive_scan(mine, lane);
  Value exclusive = shuffle_up(inclusive, 1);
  if (lane == 0) exclusive = identity;
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const Value warp_inclusive = warp_inclusive_scan(lane < warps ? scratch[lane] : identity, lane);
    Value warp_exclusive = shuffle_up(warp_inclusive, 1);
    if (lane == 0) warp_exclusive = identity;
    if (lane < warps) scratch[lane] = warp_exclusive;
    if (lane == warps - 1) *block_total = warp_inclusive;
  }
  __syncthreads();
  const Value result = combine(scratch[warp], exclusive);
  __syncthreads();
  return result;
}

struct Stream {
  const uint8_t* query_symbols;
  const uint8_t* key_symbols;  // == query_symbols in token mode
};

// Element ids: token mode, the position; QKV, 2 * position + (1 for the key).
template <bool kToken>
__device__ __forceinline__ int element_time(int id) { return kToken ? id : id >> 1; }
template <bool kToken>
__device__ __forceinline__ bool element_is_key(int id) { return kToken || (id & 1); }

// Partition class of the element at `rank`: 0 or 1 (the bit), or 2 (dropped).
template <bool kToken>
__device__ __forceinline__ int element_class(const uint16_t* ids, const uint8_t* flags, int rank,
                                             int depth, int bit, const Stream& stream) {
  const int id = ids[rank];
  const int time = element_time<kToken>(id);
  if ((flags[rank] & kDead) || time < depth) return 2;
  const uint8_t* symbols = element_is_key<kToken>(id) ? stream.key_symbols : stream.query_symbols;
  return (symbols[time - depth] >> bit) & 1;
}

template <bool kToken>
__device__ __forceinline__ PartitionValue partition_value(const uint16_t* ids, const uint8_t* flags,
                                                          int rank, int element_class) {
  const bool head = flags[rank] & kHead;
  const bool kept = element_class != 2;
  return PartitionValue{kept ? (element_class ? 0x10000u : 1u) : 0u, head ? 1u : 0u,
                        kept ? 1u : 0u, head ? rank : -1};
}

struct Shared {
  uint16_t* ids[2];
  uint8_t* flags[2];
  uint16_t* group_scratch;  // per group head: 0-count of the group, or "has a match"
  int16_t* latest_key;      // per query position: the answer's key position, -1 for none
  uint8_t* query_symbols;
  uint8_t* key_symbols;
};

// Token ROSA of a stream with at most kMaxRuns runs of equal symbols, from its runs (the
// `rosa_runs` of reference.py, whose docstring derives it). Position i in run r (symbol s_r,
// start b_r, size n_r) at offset o = i - b_r matches, in an earlier run m with s_m = s_r, at
// b_m + o with length o + 1 + E(r - 1, m - 1) when n_m > o, and at the run's end with length
// min(n_m, o + 1); in its own run at i - 1 with length o. E(a, b), the backward common length of
// the prefixes ending with runs a and b, is 0 for unequal symbols, the shorter size for unequal
// sizes, else n_a + E(a - 1, b - 1): a table filled one diagonal a - b per thread.
// Returns false (touching nothing) when the stream has more runs; the tables reuse the work
// region at `tables`, which the grouping has not used yet.
__device__ bool answer_from_runs(const uint8_t* symbols, int length, const int64_t* __restrict__ v,
                                 int64_t* __restrict__ out, int64_t base, int64_t channels,
                                 unsigned char* tables) {
  constexpr int kMaxRuns = heron_rosa_grouping::kMaxRuns;
  __shared__ int run_count;
  if (threadIdx.x == 0) run_count = 0;
  __syncthreads();
  int starts_here = 0;
  for (int time = threadIdx.x; time < length; time += blockDim.x)
    starts_here += time == 0 || symbols[time] != symbols[time - 1];
  starts_here = __reduce_add_sync(0xffffffffu, starts_here);
  if ((threadIdx.x & 31) == 0 && starts_here) atomicAdd(&run_count, starts_here);
  __syncthreads();
  const int runs = run_count;
  if (runs > kMaxRuns) return false;

  uint16_t* run_start = reinterpret_cast<uint16_t*>(tables);  // runs + 1 entries
  uint16_t* run_symbol = run_start + (kMaxRuns + 1);
  uint16_t* common = run_symbol + kMaxRuns;  // E(a, b) at a (a - 1) / 2 + b, for a > b
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int found = 0;
    for (int first = 0; first < length; first += 32) {
      const int time = first + lane;
      const bool starts = time < length && (time == 0 || symbols[time] != symbols[time - 1]);
      const unsigned int ballot = __ballot_sync(0xffffffffu, starts);
      if (starts) {
        const int run = found + __popc(ballot & ((1u << lane) - 1u));
        run_start[run] = static_cast<uint16_t>(time);
        run_symbol[run] = symbols[time];
      }
      found += __popc(ballot);
    }
    if (lane == 0) run_start[runs] = static_cast<uint16_t>(length);
  }
  __syncthreads();
  for (int diagonal = static_cast<int>(threadIdx.x) + 1; diagonal < runs; diagonal += blockDim.x) {
    int previous = 0;  // E(a - 1, b - 1); 0 before the stream
    for (int b = 0; b + diagonal < runs; ++b) {
      const int a = b + diagonal;
      const int size_a = run_start[a + 1] - run_start[a], size_b = run_start[b + 1] - run_start[b];
      int value = 0;
      if (run_symbol[a] == run_symbol[b]) value = size_a != size_b ? min(size_a, size_b) : size_a + previous;
      common[a * (a - 1) / 2 + b] = static_cast<uint16_t>(value);
      previous = value;
    }
  }
  __syncthreads();
  for (int time = threadIdx.x; time < length; time += blockDim.x) {
    int run = 0;  // the last run starting at or before `time`
    for (int step = kMaxRuns / 2; step >= 1; step >>= 1)
      if (run + step < runs && run_start[run + step] <= time) run += step;
    const int offset = time - run_start[run];
    const int symbol = run_symbol[run];
    int best_length = offset, best_end = time - 1;  // own run: length `offset` (none at 0)
    auto consider = [&](int match, int end) {
      if (match > best_length || (match == best_length && end > best_end)) {
        best_length = match;
        best_end = end;
      }
    };
    for (int other = 0; other + 1 < run; ++other) {  // adjacent runs differ in symbol
      if (run_symbol[other] != symbol) continue;
      const int start = run_start[other], size = run_start[other + 1] - start;
      if (size > offset)
        consider(offset + 1 + (other > 0 ? common[(run - 1) * (run - 2) / 2 + other - 1] : 0), start + offset);
      consider(min(size, offset + 1), start + size - 1);
    }
    out[base + time * channels] = best_length > 0 ? v[base + (best_end + 1) * channels] : -1;
  }
  return true;
}

template <bool kToken>
__global__ void __launch_bounds__(1024) rosa_grouping_kernel(
    const int64_t* __restrict__ q, const int64_t* __restrict__ k, const int64_t* __restrict__ v,
    int64_t* __restrict__ out, int32_t length, int64_t channels, int64_t work_per_element,
    int32_t* __restrict__ handed_over) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  __shared__ PartitionValue partition_scratch[32];
  __shared__ PartitionValue partition_total;
  __shared__ DetectionValue detection_scratch[32];
  __shared__ DetectionValue detection_total;
  __shared__ unsigned int symbol_bits;

  const int64_t stream_index = blockIdx.x;
  const int64_t batch = stream_index / channels, channel = stream_index % channels;
  const int64_t base = batch * length * channels + channel;
  const int elements = kToken ? length : 2 * length;

  Shared shared;
  unsigned char* cursor = shared_memory;
  shared.ids[0] = reinterpret_cast<uint16_t*>(cursor); cursor += elements * 2;
  shared.ids[1] = reinterpret_cast<uint16_t*>(cursor); cursor += elements * 2;
  shared.group_scratch = reinterpret_cast<uint16_t*>(cursor); cursor += elements * 2;
  shared.latest_key = reinterpret_cast<int16_t*>(cursor); cursor += length * 2;
  shared.flags[0] = cursor; cursor += elements;
  shared.flags[1] = cursor;
  cursor = shared_memory + heron_rosa_grouping::work_region_bytes(length, kToken);
  shared.query_symbols = cursor; cursor += length;
  shared.key_symbols = kToken ? shared.query_symbols : cursor;
  const Stream stream{shared.query_symbols, shared.key_symbols};

  if (threadIdx.x == 0) symbol_bits = 0;
  __syncthreads();
  unsigned int bits_seen = 0;
  bool too_large = false, query_varies = false, key_varies = false;
  const int64_t first_query = q[base], first_key = kToken ? first_query : k[base];
  for (int time = threadIdx.x; time < length; time += blockDim.x) {
    const int64_t query = q[base + time * channels];
    shared.query_symbols[time] = static_cast<uint8_t>(query);
    bits_seen |= static_cast<unsigned int>(query);
    too_large |= query > heron_rosa_grouping::kMaxSymbol;
    query_varies |= query != first_query;
    if (!kToken) {
      const int64_t key = k[base + time * channels];
      shared.key_symbols[time] = static_cast<uint8_t>(key);
      bits_seen |= static_cast<unsigned int>(key);
      too_large |= key > heron_rosa_grouping::kMaxSymbol;
      key_varies |= key != first_key;
    }
    shared.latest_key[time] = -1;
  }
  for (int rank = threadIdx.x; rank < elements; rank += blockDim.x) {
    shared.ids[0][rank] = static_cast<uint16_t>(rank);
    shared.flags[0][rank] = rank == 0 ? kHead : 0;
  }
  bits_seen = __reduce_or_sync(0xffffffffu, bits_seen);
  if ((threadIdx.x & 31) == 0) atomicOr(&symbol_bits, bits_seen);
  // Constant q and k (dead channels of a trained model) in closed form: with q == k everywhere
  // the longest match of query i ends at key i - 1, so y[i] = v[i]; otherwise nothing matches.
  // The grouping would keep them alive for T levels and hand them over.
  const bool queries_vary = __syncthreads_or(query_varies);
  const bool keys_vary = kToken ? queries_vary : __syncthreads_or(key_varies);
  if (!queries_vary && !keys_vary) {
    const bool equal = first_query == first_key;
    for (int time = threadIdx.x; time < length; time += blockDim.x)
      out[base + time * channels] = equal && time > 0 ? v[base + time * channels] : -1;
    if (threadIdx.x == 0) handed_over[stream_index] = 0;
    return;
  }
  const bool hand_over_now = __syncthreads_or(too_large);
  if (threadIdx.x == 0) handed_over[stream_index] = hand_over_now;
  if (hand_over_now) return;
  if constexpr (kToken) {
    if (answer_from_runs(shared.query_symbols, length, v, out, base, channels, shared_memory)) return;
  }
  const int bits = symbol_bits == 0 ? 0 : 32 - __clz(symbol_bits);
  const int passes = bits > 0 ? bits : 1;  // one pass still drops the elements out of history

  const int per_thread = (elements + blockDim.x - 1) / blockDim.x;
  const int64_t work_limit = work_per_element * elements;
  int64_t work = 0;
  int live = elements, current = 0;
  bool fallback = false;
  for (int depth = 0;; ++depth) {
    for (int bit = passes - 1; bit >= 0 && live > 0; --bit) {
      const uint16_t* ids = shared.ids[current];
      const uint8_t* flags = shared.flags[current];
      uint16_t* next_ids = shared.ids[current ^ 1];
      uint8_t* next_flags = shared.flags[current ^ 1];
      const int first = threadIdx.x * per_thread;
      const int last = min(first + per_thread, live);
      const PartitionValue identity{0u, 0u, 0u, -1};
      PartitionValue total = identity;
      for (int rank = first; rank < last; ++rank)
        total = combine(total, partition_value<kToken>(
                                   ids, flags, rank, element_class<kToken>(ids, flags, rank, depth, bit, stream)));
      const PartitionValue prefix =
          block_exclusive_scan(total, identity, partition_scratch, &partition_total);
      // Each group's last element publishes the group's count of kept 0-elements at its head.
      PartitionValue running = prefix;
      for (int rank = first; rank < last; ++rank) {
        const PartitionValue value = partition_value<kToken>(
            ids, flags, rank, element_class<kToken>(ids, flags, rank, depth, bit, stream));
        const PartitionValue inclusive = combine(running, value);
        if (rank + 1 == live || (flags[rank + 1] & kHead))
          shared.group_scratch[inclusive.group_start] = static_cast<uint16_t>(inclusive.group_counts & 0xffffu);
        running = inclusive;
      }
      __syncthreads();
      running = prefix;
      for (int rank = first; rank < last; ++rank) {
        const int element_class_ = element_class<kToken>(ids, flags, rank, depth, bit, stream);
        const PartitionValue value = partition_value<kToken>(ids, flags, rank, element_class_);
        if (element_class_ != 2) {
          const bool head = value.head;
          const int group_start = head ? rank : running.group_start;
          const uint32_t before_in_group = head ? 0u : running.group_counts;
          const int zeros_before = before_in_group & 0xffffu, ones_before = before_in_group >> 16;
          const int kept_before = static_cast<int>(running.kept);
          int destination;
          bool new_head;
          if (element_class_ == 0) {
            destination = kept_before - ones_before;
            new_head = zeros_before == 0;
          } else {
            destination = kept_before - zeros_before + shared.group_scratch[group_start];
            new_head = ones_before == 0;
          }
          next_ids[destination] = ids[rank];
          next_flags[destination] = new_head ? kHead : 0;
        }
        running = combine(running, value);
      }
      work += live;
      live = static_cast<int>(partition_total.kept);
      current ^= 1;
      __syncthreads();
    }
    if (live == 0) break;

    // Detection on the groups of length depth + 1.
    const uint16_t* ids = shared.ids[current];
    uint8_t* flags = shared.flags[current];
    const int first = threadIdx.x * per_thread;
    const int last = min(first + per_thread, live);
    bool matched_any = false;
    if (kToken) {
      // Every element is a key, so a query matches iff it is not the first of its group, and
      // a group is alive iff it has two elements.
      uint32_t dead_mask = 0;  // per_thread <= 16 (elements <= 16 * 1024)
      for (int rank = first; rank < last; ++rank) {
        const bool matched = !(flags[rank] & kHead);
        const bool next_in_group = rank + 1 < live && !(flags[rank + 1] & kHead);
        if (matched) shared.latest_key[ids[rank]] = static_cast<int16_t>(ids[rank - 1]);
        matched_any |= matched;
        if (!matched && !next_in_group) dead_mask |= 1u << (rank - first);
      }
      __syncthreads();  // the neighbour's head flag is read above before anyone marks it dead
      for (int rank = first; rank < last; ++rank)
        if (dead_mask >> (rank - first) & 1u) flags[rank] |= kDead;
    } else {
      // The other id buffer is free until the next partition: it keeps each rank's group head.
      uint16_t* group_of_rank = shared.ids[current ^ 1];
      for (int rank = first; rank < last; ++rank) shared.group_scratch[rank] = 0;
      const DetectionValue identity{-1, -1};
      DetectionValue total = identity;
      for (int rank = first; rank < last; ++rank)
        total = combine(total, DetectionValue{(flags[rank] & kHead) ? rank : -1,
                                              element_is_key<kToken>(ids[rank]) ? rank : -1});
      DetectionValue running =
          block_exclusive_scan(total, identity, detection_scratch, &detection_total);
      for (int rank = first; rank < last; ++rank) {
        const int id = ids[rank];
        const bool head = flags[rank] & kHead;
        const int group_start = head ? rank : running.group_start;
        group_of_rank[rank] = static_cast<uint16_t>(group_start);
        // The latest key before me; it is in my group iff it is not before the group's head.
        if (!element_is_key<kToken>(id) && running.key_rank >= group_start) {
          shared.latest_key[element_time<kToken>(id)] =
              static_cast<int16_t>(element_time<kToken>(ids[running.key_rank]));
          shared.group_scratch[group_start] = 1;
          matched_any = true;
        }
        running = combine(running, DetectionValue{head ? rank : -1,
                                                  element_is_key<kToken>(id) ? rank : -1});
      }
      __syncthreads();
      for (int rank = first; rank < last; ++rank)
        if (!shared.group_scratch[group_of_rank[rank]]) flags[rank] |= kDead;
    }
    if (!__syncthreads_or(matched_any)) break;
    if (work + static_cast<int64_t>(live) * passes > work_limit) {
      fallback = true;
      break;
    }
  }
  if (fallback) {
    if (threadIdx.x == 0) handed_over[stream_index] = 1;
    return;
  }
  __syncthreads();
  for (int time = threadIdx.x; time < length; time += blockDim.x) {
    const int latest = shared.latest_key[time];
    out[base + time * channels] = latest >= 0 ? v[base + (latest + 1) * channels] : -1;
  }
}

}  // namespace

namespace heron_rosa_grouping {

cudaError_t launch(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                   int64_t batch, int64_t length, int64_t channels, int64_t work_per_element,
                   int32_t* handed_over, cudaStream_t stream) {
  const int64_t num_streams = batch * channels;
  const bool token = q == k;
  const int64_t elements = token ? length : 2 * length;
  if (!fits(length, token)) return cudaErrorInvalidValue;
  if (num_streams == 0 || length == 0) return cudaSuccess;
  // Up to 16 ranks per thread (the token detection keeps one bit per rank in a 32-bit mask),
  // whole warps, at most 1024 threads.
  int threads = static_cast<int>((elements + 7) / 8);
  threads = ((threads + 31) / 32) * 32;
  if (threads > 1024) threads = 1024;
  const int64_t bytes = shared_bytes(length, token);
  cudaError_t status;
  if (token) {
    status = cudaFuncSetAttribute(rosa_grouping_kernel<true>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (status != cudaSuccess) return status;
    rosa_grouping_kernel<true><<<static_cast<unsigned int>(num_streams), threads, bytes, stream>>>(
        q, k, v, out, static_cast<int32_t>(length), channels, work_per_element, handed_over);
  } else {
    status = cudaFuncSetAttribute(rosa_grouping_kernel<false>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (status != cudaSuccess) return status;
    rosa_grouping_kernel<false><<<static_cast<unsigned int>(num_streams), threads, bytes, stream>>>(
        q, k, v, out, static_cast<int32_t>(length), channels, work_per_element, handed_over);
  }
  return cudaGetLastError();
}

}  // namespace heron_rosa_grouping
