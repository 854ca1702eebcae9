// Exact QKV ROSA on one stream, shared by the C++ CPU extension and the CUDA kernel.
//
// Semantics: spec/ROSA.md §1-2. For each position i, the longest suffix of q[0..i] that occurs in
// k ending at some j < i, the largest such j, output v[j + 1]; -1 when q[i] never occurred in
// k[0..i-1].
//
// Algorithm (O(T log T) in the worst case, no step walks a suffix-link chain to update values):
//   Phase 1: build the suffix automaton (SAM) of k online and run the matcher of q against the
//     automaton of k[0..i-1] before appending k[i]; record the matched state w_i (0 = no match).
//     When an insertion splits the state the matcher sits in, the matcher moves to the clone if
//     the clone holds strings of its length (the same rule as the Python SuffixAutomatonROSA).
//   Phase 2: endpos_final(w) restricted to positions <= i - 1 equals the end-position set of w at
//     time i (later clones and insertions only add positions >= their own time), so the answer is
//     max{p in endpos_final(w_i) : p <= i - 1}. Lay out the final suffix-link tree so that every
//     subtree covers a contiguous range of "rank" slots, one slot per position (counting sort by
//     length gives a top-down order without a stack), then sweep i upwards, inserting position
//     i - 1 into a max segment tree over ranks and querying the range of w_i.
//
// Memory: the CPU gives each worker a private buffer; the GPU interleaves the streams of a launch
// so that element e of neighbouring threads are neighbours (time-indexed arrays coalesce) while
// each state's fields stay contiguous (one sector per state visit). `Scratch` hides the
// difference. Phase 2 reuses the transition fields of the state records. The header includes
// no torch or CUDA headers.
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define ROSA_HD __host__ __device__ __forceinline__
#else
#define ROSA_HD inline
#endif

namespace heron_rosa {

// Alphabets up to this size use a dense transition table (sigma slots per state); larger ones
// an open-addressing hash table of edges.
constexpr int64_t kDenseMaxSigma = 16;

// Query ranges up to this many ranks are answered by scanning the segment tree's leaves.
constexpr int32_t kLeafScan = 8;

// Bit set in a state's subtree-size field when the state owns a position (is not a clone).
constexpr int32_t kOwnsPosition = 1 << 30;

// A per-stream array of int32: element e at base[e * stride].
struct Strided {
  int32_t* base;
  int64_t stride;
  ROSA_HD int32_t& operator[](int64_t element) const { return base[element * stride]; }
};

// A per-stream array of records of `width` int32 fields, each record contiguous in memory (one
// cache line / sector for one thread): field f of item e at base[e * item_stride + f].
struct Records {
  int32_t* base;
  int64_t item_stride;
  ROSA_HD int32_t& operator()(int64_t item, int64_t field) const {
    return base[item * item_stride + field];
  }
};

// State record fields. Phase 1: length, suffix link, transitions (dense: one slot per symbol;
// hashed: the first edge). Phase 2 reuses the transition fields.
constexpr int kLen = 0, kLink = 1, kNext = 2;
constexpr int kSize = 2;   // phase 2: subtree size, then child-range cursor, then range end
constexpr int kStart = 3;  // phase 2: first rank slot of the subtree
// Edge record fields (hashed transitions).
constexpr int kEdgeState = 0, kEdgeSymbol = 1, kEdgeTarget = 2, kEdgeNext = 3;

ROSA_HD int64_t state_capacity(int64_t length) { return 2 * length + 1; }
ROSA_HD int64_t edge_capacity(int64_t length) { return 3 * length + 4; }
ROSA_HD int64_t hash_capacity(int64_t length) {
  // A power of two at least twice the edge bound keeps linear probing short.
  int64_t capacity = 16;
  while (capacity < 2 * edge_capacity(length)) capacity *= 2;
  return capacity;
}
ROSA_HD int64_t state_width(int64_t sigma) { return 2 + (sigma > 2 ? sigma : 2); }

// Offsets of every per-stream region, in int32 units per stream (the launch multiplies them by
// its stream count when it interleaves streams).
struct Layout {
  int64_t state_width;
  int64_t states;          // state_capacity records of state_width
  int64_t position_state;  // length: the (non-clone) state created when position p was appended
  int64_t match_state;     // length: matched state w_i (0 = no match)
  int64_t length_count;    // length + 1: counting sort of the states by length
  int64_t order;           // state_capacity: states by increasing length
  int64_t segment_tree;    // 2 * length + 2 + kLeafScan
  int64_t edges;           // hashed only: edge_capacity records of 4
  int64_t hash_slot;       // hashed only: hash_capacity
  int64_t total;
};

// sigma > 0: dense transitions over symbols 0..sigma-1; sigma == 0: hashed transitions.
ROSA_HD Layout make_layout(int64_t length, int64_t sigma) {
  Layout layout{};
  const int64_t states = state_capacity(length);
  layout.state_width = state_width(sigma);
  int64_t offset = 0;
  layout.states = offset; offset += states * layout.state_width;
  layout.position_state = offset; offset += length;
  layout.match_state = offset; offset += length;
  layout.length_count = offset; offset += length + 1;
  layout.order = offset; offset += states;
  layout.segment_tree = offset; offset += 2 * length + 2 + kLeafScan;
  if (sigma > 0) {
    layout.edges = layout.hash_slot = -1;
  } else {
    layout.edges = offset; offset += edge_capacity(length) * 4;
    layout.hash_slot = offset; offset += hash_capacity(length);
  }
  layout.total = offset;
  return layout;
}

// Where one stream's scratch lives: `workspace` holds `streams` interleaved streams (the CPU uses
// 1) and this stream is number `lane` among them.
struct Scratch {
  int32_t* workspace;
  int64_t streams;
  int64_t lane;
  ROSA_HD Strided array(int64_t offset) const {
    return Strided{workspace + offset * streams + lane, streams};
  }
  ROSA_HD Records records(int64_t offset, int64_t width) const {
    return Records{workspace + offset * streams + lane * width, width * streams};
  }
};

// Dense transitions in the state records. kSigma > 0 fixes the alphabet at compile time.
template <int kSigma>
struct DenseTransitions {
  Records states;
  int32_t runtime_sigma;

  ROSA_HD int32_t sigma() const { return kSigma > 0 ? kSigma : runtime_sigma; }
  ROSA_HD void clear_state(int32_t state) const {
    for (int32_t symbol = 0; symbol < sigma(); ++symbol) states(state, kNext + symbol) = -1;
  }
  ROSA_HD int32_t get(int32_t state, int32_t symbol) const {
    if (symbol >= sigma()) return -1;  // a query symbol that no key uses
    return states(state, kNext + symbol);
  }
  ROSA_HD void set(int32_t state, int32_t symbol, int32_t target) const {
    states(state, kNext + symbol) = target;
  }
  ROSA_HD void copy_state(int32_t from, int32_t to) const {
    for (int32_t symbol = 0; symbol < sigma(); ++symbol)
      states(to, kNext + symbol) = states(from, kNext + symbol);
  }
};

// Transitions as edges in per-state linked lists (so a clone can copy its source's edges) plus an
// open-addressing hash from (state, symbol) to the edge. A SAM has < 3T edges, so the copies of
// all clones together are O(T).
struct HashedTransitions {
  Records states;  // field kNext holds the state's first edge
  Records edges;
  Strided hash_slot;
  int64_t hash_mask;
  int32_t* edge_count;

  ROSA_HD static uint32_t mix(int32_t state, int32_t symbol) {
    uint32_t h = (uint32_t)state * 0x9E3779B1u ^ ((uint32_t)symbol + 0x7F4A7C15u) * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 13;
    return h;
  }
  ROSA_HD void clear_table() const {
    for (int64_t slot = 0; slot <= hash_mask; ++slot) hash_slot[slot] = -1;
    *edge_count = 0;
  }
  ROSA_HD void clear_state(int32_t state) const { states(state, kNext) = -1; }
  ROSA_HD int64_t find_slot(int32_t state, int32_t symbol) const {
    int64_t slot = mix(state, symbol) & hash_mask;
    while (true) {
      const int32_t edge = hash_slot[slot];
      if (edge < 0 || (edges(edge, kEdgeState) == state && edges(edge, kEdgeSymbol) == symbol))
        return slot;
      slot = (slot + 1) & hash_mask;
    }
  }
  ROSA_HD int32_t get(int32_t state, int32_t symbol) const {
    const int32_t edge = hash_slot[find_slot(state, symbol)];
    return edge < 0 ? -1 : edges(edge, kEdgeTarget);
  }
  ROSA_HD void set(int32_t state, int32_t symbol, int32_t target) const {
    const int64_t slot = find_slot(state, symbol);
    int32_t edge = hash_slot[slot];
    if (edge < 0) {
      edge = (*edge_count)++;
      hash_slot[slot] = edge;
      edges(edge, kEdgeState) = state;
      edges(edge, kEdgeSymbol) = symbol;
      edges(edge, kEdgeNext) = states(state, kNext);
      states(state, kNext) = edge;
    }
    edges(edge, kEdgeTarget) = target;
  }
  ROSA_HD void copy_state(int32_t from, int32_t to) const {
    for (int32_t edge = states(from, kNext); edge >= 0; edge = edges(edge, kEdgeNext))
      set(to, edges(edge, kEdgeSymbol), edges(edge, kEdgeTarget));
  }
};

// One stream: q/k/v/out element at time t is at pointer[t * time_stride].
template <typename Transitions>
ROSA_HD void rosa_stream(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                         int64_t time_stride, int32_t length, const Layout& layout,
                         const Scratch& scratch, const Transitions& transitions) {
  const Records states = transitions.states;
  const Strided position_state = scratch.array(layout.position_state);
  const Strided match_state = scratch.array(layout.match_state);
  const Strided length_count = scratch.array(layout.length_count);

  // ---- Phase 1: automaton of k, matcher of q. States are counted by length as they are made
  // (a state's length never changes) for the counting sort of phase 2.
  for (int32_t len = 0; len <= length; ++len) length_count[len] = 0;
  states(0, kLen) = 0;
  states(0, kLink) = -1;
  transitions.clear_state(0);
  length_count[0] = 1;
  int32_t num_states = 1, last = 0, matched = 0, matched_len = 0;
  for (int32_t i = 0; i < length; ++i) {
    const int32_t query = (int32_t)q[(int64_t)i * time_stride];
    int32_t next = transitions.get(matched, query);
    while (matched != 0 && next < 0) {
      matched = states(matched, kLink);
      const int32_t link_len = states(matched, kLen);
      matched_len = matched_len < link_len ? matched_len : link_len;
      next = transitions.get(matched, query);
    }
    if (next >= 0) {
      matched = next;
      matched_len += 1;
    } else {
      matched = 0;
      matched_len = 0;
    }
    match_state[i] = matched;

    const int32_t key = (int32_t)k[(int64_t)i * time_stride];
    const int32_t cur = num_states++;
    states(cur, kLen) = i + 1;
    length_count[i + 1] += 1;
    transitions.clear_state(cur);
    position_state[i] = cur;
    int32_t p = last;
    int32_t target = -1;
    while (p != -1) {
      target = transitions.get(p, key);
      if (target >= 0) break;
      transitions.set(p, key, cur);
      p = states(p, kLink);
    }
    if (p == -1) {
      states(cur, kLink) = 0;
    } else {
      const int32_t p_len = states(p, kLen);
      if (p_len + 1 == states(target, kLen)) {
        states(cur, kLink) = target;
      } else {
        const int32_t clone = num_states++;
        states(clone, kLen) = p_len + 1;
        length_count[p_len + 1] += 1;
        states(clone, kLink) = states(target, kLink);
        transitions.clear_state(clone);
        transitions.copy_state(target, clone);
        while (p != -1 && transitions.get(p, key) == target) {
          transitions.set(p, key, clone);
          p = states(p, kLink);
        }
        states(target, kLink) = clone;
        states(cur, kLink) = clone;
        if (matched == target && matched_len <= p_len + 1) matched = clone;
      }
    }
    last = cur;
  }

  // ---- Phase 2: contiguous rank ranges for the subtrees of the final suffix-link tree.
  const Strided order = scratch.array(layout.order);
  const Strided tree = scratch.array(layout.segment_tree);
  int32_t running = 0;
  for (int32_t len = 0; len <= length; ++len) {
    const int32_t count = length_count[len];
    length_count[len] = running;
    running += count;
  }
  // The transition fields are free now: kSize starts as "owns a position" (a non-clone state:
  // the state created for position len - 1).
  for (int32_t state = 0; state < num_states; ++state) {
    const int32_t len = states(state, kLen);
    const int32_t slot = length_count[len];
    length_count[len] = slot + 1;
    order[slot] = state;
    const bool owns_position = len > 0 && position_state[len - 1] == state;
    states(state, kSize) = owns_position ? (kOwnsPosition | 1) : 0;
  }
  for (int32_t index = num_states - 1; index >= 1; --index) {  // children before parents
    const int32_t state = order[index];
    const int32_t size = states(state, kSize) & ~kOwnsPosition;
    states(states(state, kLink), kSize) += size;
  }
  // Parents before children: a state's range starts at its parent's cursor; its own slot (if
  // any) comes first, then its children's ranges. kSize ends as the exclusive end of the range.
  // position_state is no longer needed: it becomes the rank of each position.
  const Strided position_rank = position_state;
  states(0, kStart) = 0;
  states(0, kSize) = 0;
  for (int32_t index = 1; index < num_states; ++index) {
    const int32_t state = order[index];
    const int32_t parent = states(state, kLink);
    const int32_t start = states(parent, kSize);
    const int32_t packed = states(state, kSize);
    const int32_t size = packed & ~kOwnsPosition;
    states(parent, kSize) = start + size;
    states(state, kStart) = start;
    const bool owns_position = (packed & kOwnsPosition) != 0;
    states(state, kSize) = start + (owns_position ? 1 : 0);
    if (owns_position) position_rank[states(state, kLen) - 1] = start;
  }
  // The rank range of every query, gathered in a pass of independent loads (match_state becomes
  // the range start, `order` the range end; both unused from here on).
  const Strided query_lo = match_state, query_hi = order;
  for (int32_t i = 0; i < length; ++i) {
    const int32_t state = match_state[i];
    query_lo[i] = states(state, kStart) + length;
    query_hi[i] = state == 0 ? 0 : states(state, kSize) + length;  // empty range: no match
  }

  // ---- Sweep: max segment tree over ranks; position i - 1 is inserted before answering i.
  for (int32_t node = 0; node < 2 * length + 2 + kLeafScan; ++node) tree[node] = -1;
  for (int32_t i = 0; i < length; ++i) {
    if (i > 0) {
      // i - 1 exceeds every stored value, so the new maximum of each ancestor is i - 1.
      for (int32_t node = position_rank[i - 1] + length; node >= 1; node >>= 1) tree[node] = i - 1;
    }
    int32_t lo = query_lo[i], hi = query_hi[i], best = -1;
    if (hi - lo <= kLeafScan) {
      // Small subtrees (the common case on random streams): a fixed-width scan of the leaves,
      // without the data-dependent loop. The tree is padded so the reads stay inside it.
      for (int32_t offset = 0; offset < kLeafScan; ++offset) {
        const int32_t value = tree[lo + offset];
        best = (lo + offset < hi && value > best) ? value : best;
      }
      hi = lo;
    }
    while (lo < hi) {
      // Branch-free bottom-up step (an odd lo / odd hi takes its node); both loads stay inside
      // the tree, and max tolerates the node read twice when lo + 1 == hi.
      const int32_t left = tree[lo], right = tree[hi - 1];
      const int32_t take_left = (lo & 1) ? left : -1, take_right = (hi & 1) ? right : -1;
      best = take_left > best ? take_left : best;
      best = take_right > best ? take_right : best;
      lo = (lo + 1) >> 1;
      hi >>= 1;
    }
    // A matched state has an end position <= i - 1, so best >= 0 exactly when there is a match.
    out[(int64_t)i * time_stride] = best < 0 ? -1 : v[(int64_t)(best + 1) * time_stride];
  }
}

// Runs stream `stream` of an input laid out as [B, T, S] (S = 1 for [T] / [B, T]) with the
// scratch `scratch` (sized by make_layout(length, sigma)).
ROSA_HD void rosa_run_stream(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                             int64_t stream, int64_t length, int64_t channels, int64_t sigma,
                             const Scratch& scratch, int32_t* edge_count) {
  const int64_t batch = stream / channels, channel = stream % channels;
  const int64_t base = batch * length * channels + channel;
  const Layout layout = make_layout(length, sigma);
  const Records states = scratch.records(layout.states, layout.state_width);
  q += base;
  k += base;
  v += base;
  out += base;
  if (sigma == 2) {
    rosa_stream(q, k, v, out, channels, (int32_t)length, layout, scratch,
                DenseTransitions<2>{states, 2});
  } else if (sigma > 0) {
    rosa_stream(q, k, v, out, channels, (int32_t)length, layout, scratch,
                DenseTransitions<0>{states, (int32_t)sigma});
  } else {
    const HashedTransitions transitions{states, scratch.records(layout.edges, 4),
                                        scratch.array(layout.hash_slot),
                                        hash_capacity(length) - 1, edge_count};
    transitions.clear_table();
    rosa_stream(q, k, v, out, channels, (int32_t)length, layout, scratch, transitions);
  }
}

}  // namespace heron_rosa
