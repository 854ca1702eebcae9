// Exact QKV ROSA on one stream, shared by the C++ CPU extension and the CUDA kernel.
//
// Semantics: spec/ROSA.md §1-2. For each position i, the longest suffix of q[0..i] that occurs in
// k ending at some j < i, the largest such j, output v[j + 1]; -1 when q[i] never occurred in
// k[0..i-1].
//
// Fast path: the official single pass (last end position per state, assigned along the suffix-link
// chain at each append) with a budget on the chain steps (rosa_stream_chain_walk); it is the
// fastest choice on random-like streams. A stream whose chains exceed the budget (constant,
// periodic, almost periodic) is rerun by the two-phase algorithm below, so the worst case stays
// O(T log T + budget * T).
//
// Two-phase algorithm (O(T log T) in the worst case, no step walks a suffix-link chain):
//   Phase 1: build the suffix automaton (SAM) of k online and run the matcher of q against the
//     automaton of k[0..i-1] before appending k[i]; record the matched state w_i (0 = no match).
//     When an insertion splits the state the matcher sits in, the matcher moves to the clone if
//     the clone holds strings of its length (the same rule as the Python SuffixAutomatonROSA).
//   Phase 2: endpos_final(w) restricted to positions <= i - 1 equals the end-position set of w at
//     time i (later clones and insertions only add positions >= their own time), so the answer is
//     max{p in endpos_final(w_i) : p <= i - 1}. Lay out the final suffix-link tree so that every
//     subtree covers a contiguous range of "rank" slots, one slot per position (counting sort by
//     length gives a top-down order without a stack). Then sweep i upwards: each rank holds its
//     position, so a short range is answered by one scan (ignoring positions >= i); longer ranges
//     use a max segment tree over blocks of ranks into which position i - 1 is inserted before
//     answering i.
// In token mode (q and k the same stream) neither pass needs the matcher: the suffix link of the
// state created for position i is the state of the longest earlier-occurring suffix.
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

// Ranks per block of the sweep's segment tree; ranges this short are answered by one scan.
constexpr int32_t kLeafScan = 8;

// Suffix-link steps per token that the chain-walking pass may spend (with a head start of
// kChainSlackTokens tokens' worth) before a stream falls back to the two-phase algorithm. Random
// 1-bit streams need about 5 (T = 128) to 14 (T = 65536) steps per token, 4-bit about 2, token
// streams almost none; constant and periodic streams exceed it within the first hundred or so
// tokens, so little work is wasted on them.
constexpr int64_t kDefaultChainBudgetPerToken = 20;
constexpr int64_t kChainSlackTokens = 16;

// Bit set in a state's subtree-size field when the state owns a position (is not a clone).
constexpr int32_t kOwnsPosition = 1 << 30;

// kStreams: the number of interleaved streams when known at compile time (1 on the CPU, which
// lets the compiler drop the index multiplications), 0 when it is a runtime value (the GPU's
// launch width). Likewise kWidth for record widths.

// A per-stream array of int32: element e at base[e * streams].
template <int64_t kStreams>
struct Strided {
  int32_t* base;
  int64_t runtime_streams;
  ROSA_HD int32_t& operator[](int64_t element) const {
    return base[element * (kStreams > 0 ? kStreams : runtime_streams)];
  }
};

// A per-stream array of records of `width` int32 fields, each record contiguous in memory (one
// cache line / sector for one thread): field f of item e at base[e * width * streams + f].
template <int64_t kStreams, int64_t kWidth>
struct Records {
  int32_t* base;
  int64_t runtime_streams;
  int64_t runtime_width;
  ROSA_HD int32_t& operator()(int64_t item, int64_t field) const {
    return base[item * (kWidth > 0 ? kWidth : runtime_width) *
                    (kStreams > 0 ? kStreams : runtime_streams) + field];
  }
};

// State record fields. Phase 1: length, suffix link, transitions (dense: one slot per symbol;
// hashed: the first edge). Phase 2 reuses the transition fields.
constexpr int kLen = 0, kLink = 1, kNext = 2;
constexpr int kSize = 2;   // phase 2: subtree size, then child-range cursor, then range end
constexpr int kStart = 3;  // phase 2: first rank slot of the subtree
// The chain-walking pass keeps each state's last end position in the record's last field.
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
// Fields: length, link, transitions (at least 2: phase 2 reuses them), last end position.
ROSA_HD int64_t state_width(int64_t sigma) { return 3 + (sigma > 2 ? sigma : 2); }

// Offsets of every per-stream region, in int32 units per stream (the launch multiplies them by
// its stream count when it interleaves streams).
struct Layout {
  int64_t state_width;
  int64_t states;          // state_capacity records of state_width
  int64_t position_state;  // length: the (non-clone) state created when position p was appended
  int64_t match_state;     // length: matched state w_i (0 = no match)
  int64_t length_count;    // length + 1: counting sort of the states by length
  int64_t order;           // state_capacity: states by increasing length
  int64_t rank_position;   // length + kLeafScan: the position of each rank (padded for scans)
  int64_t segment_tree;    // 2 * ceil(length / kLeafScan) + 2: block maxima
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
  layout.rank_position = offset; offset += length + kLeafScan;
  layout.segment_tree = offset; offset += 2 * ((length + kLeafScan - 1) / kLeafScan) + 2;
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
template <int64_t kStreams>
struct Scratch {
  int32_t* workspace;
  int64_t runtime_streams;
  int64_t lane;
  ROSA_HD int64_t streams() const { return kStreams > 0 ? kStreams : runtime_streams; }
  ROSA_HD Strided<kStreams> array(int64_t offset) const {
    return Strided<kStreams>{workspace + offset * streams() + lane, runtime_streams};
  }
  template <int64_t kWidth>
  ROSA_HD Records<kStreams, kWidth> records(int64_t offset, int64_t width) const {
    return Records<kStreams, kWidth>{workspace + offset * streams() + lane * width,
                                     runtime_streams, width};
  }
};

// Dense transitions in the state records. kSigma > 0 fixes the alphabet at compile time.
template <int kSigma, typename StateRecords>
struct DenseTransitions {
  StateRecords states;
  int32_t runtime_sigma;

  ROSA_HD int32_t sigma() const { return kSigma > 0 ? kSigma : runtime_sigma; }
  ROSA_HD void reset() const {}  // states clear their own slots when created
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
template <typename StateRecords, typename EdgeRecords, typename Array>
struct HashedTransitions {
  StateRecords states;  // field kNext holds the state's first edge
  EdgeRecords edges;
  Array hash_slot;
  int64_t hash_mask;
  int32_t* edge_count;

  ROSA_HD static uint32_t mix(int32_t state, int32_t symbol) {
    uint32_t h = (uint32_t)state * 0x9E3779B1u ^ ((uint32_t)symbol + 0x7F4A7C15u) * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 13;
    return h;
  }
  ROSA_HD void reset() const {
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

// The matcher's step: from the state of the longest suffix of q[0..i-1] found in the automaton,
// follow suffix links until `query` extends it (or the root is reached).
template <typename Transitions>
ROSA_HD void match_query(const Transitions& transitions, int32_t query, int32_t& matched,
                         int32_t& matched_len) {
  const auto states = transitions.states;
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
}

// A state split by an extension: `clone` (-1: no split) was made from `source`.
struct Split {
  int32_t clone;
  int32_t source;
};

// The suffix-automaton extension by `key` after state `last`: `cur` (length i + 1, its
// transitions cleared) is made by the caller; a split takes state number num_states++ and gets
// its length, link and transitions here, the fields of the caller's own algorithm there. A
// matcher in the split state moves to the clone when the clone holds strings of its length.
template <bool kToken, typename Transitions>
ROSA_HD Split extend_automaton(const Transitions& transitions, int32_t key, int32_t cur,
                               int32_t last, int32_t& num_states, int32_t& matched,
                               int32_t matched_len) {
  const auto states = transitions.states;
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
    return Split{-1, -1};
  }
  const int32_t p_len = states(p, kLen);
  if (p_len + 1 == states(target, kLen)) {
    states(cur, kLink) = target;
    return Split{-1, -1};
  }
  const int32_t clone = num_states++;
  states(clone, kLen) = p_len + 1;
  states(clone, kLink) = states(target, kLink);
  transitions.clear_state(clone);
  transitions.copy_state(target, clone);
  while (p != -1 && transitions.get(p, key) == target) {
    transitions.set(p, key, clone);
    p = states(p, kLink);
  }
  states(target, kLink) = clone;
  states(cur, kLink) = clone;
  if (!kToken && matched == target && matched_len <= p_len + 1) matched = clone;
  return Split{clone, target};
}

// One stream: q/k/v/out element at time t is at pointer[t * time_stride].
// kToken: q and k are the same stream (token ROSA). Then the matched state needs no matcher: the
// suffix link of the state created for position i is the longest suffix of k[0..i] that also
// ends earlier (root: none), the state the matcher would reach.
template <bool kToken, typename Transitions, typename ScratchType>
ROSA_HD void rosa_stream(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                         int64_t time_stride, int32_t length, const Layout& layout,
                         const ScratchType& scratch, const Transitions& transitions) {
  const auto states = transitions.states;
  const auto position_state = scratch.array(layout.position_state);
  const auto match_state = scratch.array(layout.match_state);
  const auto length_count = scratch.array(layout.length_count);

  // ---- Phase 1: automaton of k, matcher of q. States are counted by length as they are made
  // (a state's length never changes) for the counting sort of phase 2.
  for (int32_t len = 0; len <= length; ++len) length_count[len] = 0;
  states(0, kLen) = 0;
  states(0, kLink) = -1;
  transitions.clear_state(0);
  length_count[0] = 1;
  int32_t num_states = 1, last = 0, matched = 0, matched_len = 0;
  for (int32_t i = 0; i < length; ++i) {
    if (!kToken) {
      match_query(transitions, (int32_t)q[(int64_t)i * time_stride], matched, matched_len);
      match_state[i] = matched;
    }

    const int32_t key = (int32_t)k[(int64_t)i * time_stride];
    const int32_t cur = num_states++;
    states(cur, kLen) = i + 1;
    length_count[i + 1] += 1;
    transitions.clear_state(cur);
    position_state[i] = cur;
    const Split split =
        extend_automaton<kToken>(transitions, key, cur, last, num_states, matched, matched_len);
    if (split.clone >= 0) length_count[states(split.clone, kLen)] += 1;
    last = cur;
    if (kToken) match_state[i] = states(cur, kLink);
  }

  // ---- Phase 2: contiguous rank ranges for the subtrees of the final suffix-link tree.
  const auto order = scratch.array(layout.order);
  const auto tree = scratch.array(layout.segment_tree);
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
  // position_state is no longer needed: it becomes the rank of each position, and
  // rank_position (the inverse permutation) holds the position of each rank.
  const auto position_rank = position_state;
  const auto rank_position = scratch.array(layout.rank_position);
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
    if (owns_position) {
      const int32_t position = states(state, kLen) - 1;
      position_rank[position] = start;
      rank_position[start] = position;
    }
  }
  for (int32_t pad = 0; pad < kLeafScan; ++pad) rank_position[length + pad] = length;  // never < i
  // The rank range of every query, gathered in a pass of independent loads (match_state becomes
  // the range start, `order` the range end; both unused from here on).
  const auto query_lo = match_state;
  const auto query_hi = order;
  for (int32_t i = 0; i < length; ++i) {
    const int32_t state = match_state[i];
    query_lo[i] = states(state, kStart);
    query_hi[i] = state == 0 ? states(state, kStart) : states(state, kSize);  // root: no match
  }

  // ---- Sweep. The answer at i is the largest position < i among the ranks of the range. Ranks
  // hold their positions statically (rank_position), so a scan of a few ranks needs no updates;
  // longer ranges use a max segment tree over blocks of kLeafScan ranks into which position i - 1
  // is inserted before answering i, plus masked scans of the two partial end blocks.
  const int32_t blocks = (length + kLeafScan - 1) / kLeafScan;
  for (int32_t node = 0; node < 2 * blocks; ++node) tree[node] = -1;
  for (int32_t i = 0; i < length; ++i) {
    if (i > 0) {
      // i - 1 exceeds every stored value, so the new maximum of each ancestor is i - 1.
      for (int32_t node = position_rank[i - 1] / kLeafScan + blocks; node >= 1; node >>= 1)
        tree[node] = i - 1;
    }
    const int32_t lo = query_lo[i], hi = query_hi[i];
    int32_t best = -1;
    // Fixed-width scans keep the common short ranges free of data-dependent loops.
    const int32_t first_end = hi - lo <= kLeafScan ? hi : (lo / kLeafScan + 1) * kLeafScan;
    for (int32_t offset = 0; offset < kLeafScan; ++offset) {
      const int32_t position = rank_position[lo + offset];
      best = (lo + offset < first_end && position < i && position > best) ? position : best;
    }
    if (first_end < hi) {
      const int32_t last_block = (hi - 1) / kLeafScan;
      const int32_t last_start = last_block * kLeafScan > first_end ? last_block * kLeafScan : first_end;
      for (int32_t offset = 0; offset < kLeafScan; ++offset) {
        const int32_t position = rank_position[last_start + offset];
        best = (last_start + offset < hi && position < i && position > best) ? position : best;
      }
      // Whole blocks strictly between the two end blocks.
      int32_t node_lo = first_end / kLeafScan + blocks, node_hi = last_start / kLeafScan + blocks;
      while (node_lo < node_hi) {
        // Branch-free bottom-up step (an odd lo / odd hi takes its node); max tolerates a node
        // read twice.
        const int32_t left = tree[node_lo], right = tree[node_hi - 1];
        const int32_t take_left = (node_lo & 1) ? left : -1, take_right = (node_hi & 1) ? right : -1;
        best = take_left > best ? take_left : best;
        best = take_right > best ? take_right : best;
        node_lo = (node_lo + 1) >> 1;
        node_hi >>= 1;
      }
    }
    // A matched state has an end position <= i - 1, so best >= 0 exactly when there is a match.
    out[(int64_t)i * time_stride] = best < 0 ? -1 : v[(int64_t)(best + 1) * time_stride];
  }
}

// The official algorithm (last end position per state, assigned along the whole suffix-link
// chain at every append) with a budget on the chain steps. On random streams the chains are
// short (about 10 states per token for 1 bit, 2 for 4 bits, ~0 for tokens) and this single pass
// beats the two-phase algorithm; constant and periodic streams make the chains O(T) long, so
// when the budget runs out the caller reruns the stream with rosa_stream (its outputs so far
// are simply overwritten). The budget is a token bucket: chain steps up to position i may not
// exceed chain_budget_per_token * (i + 1 + kChainSlackTokens). Returns whether it finished.
template <bool kToken, typename Transitions>
ROSA_HD bool rosa_stream_chain_walk(const int64_t* q, const int64_t* k, const int64_t* v,
                                    int64_t* out, int64_t time_stride, int32_t length,
                                    int64_t chain_budget_per_token, int64_t last_end_field,
                                    const Transitions& transitions) {
  int64_t allowance = chain_budget_per_token * kChainSlackTokens;
  const auto states = transitions.states;
  states(0, kLen) = 0;
  states(0, kLink) = -1;
  states(0, last_end_field) = -1;
  transitions.clear_state(0);
  int32_t num_states = 1, last = 0, matched = 0, matched_len = 0;
  for (int32_t i = 0; i < length; ++i) {
    if (!kToken) {
      match_query(transitions, (int32_t)q[(int64_t)i * time_stride], matched, matched_len);
      out[(int64_t)i * time_stride] =
          matched == 0 ? -1 : v[(int64_t)(states(matched, last_end_field) + 1) * time_stride];
    }

    const int32_t key = (int32_t)k[(int64_t)i * time_stride];
    const int32_t cur = num_states++;
    states(cur, kLen) = i + 1;
    states(cur, last_end_field) = i;
    transitions.clear_state(cur);
    const Split split =
        extend_automaton<kToken>(transitions, key, cur, last, num_states, matched, matched_len);
    if (split.clone >= 0) states(split.clone, last_end_field) = states(split.source, last_end_field);
    last = cur;
    const int32_t suffix = states(cur, kLink);
    allowance += chain_budget_per_token;
    if (kToken) {
      // Read before this position's own update below: the last end strictly before i.
      out[(int64_t)i * time_stride] =
          suffix == 0 ? -1 : v[(int64_t)(states(suffix, last_end_field) + 1) * time_stride];
    }
    for (int32_t state = suffix; state > 0; state = states(state, kLink)) {
      states(state, last_end_field) = i;
      if (--allowance < 0) return false;
    }
  }
  return true;
}

template <typename Transitions, typename ScratchType>
ROSA_HD void run_with_transitions(const int64_t* q, const int64_t* k, const int64_t* v,
                                  int64_t* out, int64_t time_stride, int32_t length,
                                  const Layout& layout, const ScratchType& scratch, bool token,
                                  int64_t chain_budget_per_token,
                                  const Transitions& transitions) {
  const int64_t last_end_field = layout.state_width - 1;
  transitions.reset();
  if (chain_budget_per_token > 0) {
    const bool finished =
        token ? rosa_stream_chain_walk<true>(q, k, v, out, time_stride, length,
                                             chain_budget_per_token, last_end_field, transitions)
              : rosa_stream_chain_walk<false>(q, k, v, out, time_stride, length,
                                              chain_budget_per_token, last_end_field, transitions);
    if (finished) return;
    transitions.reset();
  }
  if (token)
    rosa_stream<true>(q, k, v, out, time_stride, length, layout, scratch, transitions);
  else
    rosa_stream<false>(q, k, v, out, time_stride, length, layout, scratch, transitions);
}

// Runs stream `stream` of an input laid out as [B, T, S] (S = 1 for [T] / [B, T]) with the
// scratch `scratch` (sized by make_layout(length, sigma)). token: q and k are the same stream.
// chain_budget_per_token: suffix-link steps per token the chain-walking pass may spend before the
// stream is rerun by the two-phase algorithm (0: two-phase only). Either way the work is
// O(T log T + budget * T).
template <int64_t kStreams>
ROSA_HD void rosa_run_stream(const int64_t* q, const int64_t* k, const int64_t* v, int64_t* out,
                             int64_t stream, int64_t length, int64_t channels, int64_t sigma,
                             bool token, int64_t chain_budget_per_token,
                             const Scratch<kStreams>& scratch, int32_t* edge_count) {
  const int64_t batch = stream / channels, channel = stream % channels;
  const int64_t base = batch * length * channels + channel;
  const Layout layout = make_layout(length, sigma);
  q += base;
  k += base;
  v += base;
  out += base;
  if (sigma == 2) {
    const auto states = scratch.template records<5>(layout.states, layout.state_width);
    run_with_transitions(q, k, v, out, channels, (int32_t)length, layout, scratch, token,
                         chain_budget_per_token, DenseTransitions<2, decltype(states)>{states, 2});
  } else if (sigma == 16) {  // 4-bit streams: compile-time record width and transition loops
    const auto states = scratch.template records<19>(layout.states, layout.state_width);
    run_with_transitions(q, k, v, out, channels, (int32_t)length, layout, scratch, token,
                         chain_budget_per_token, DenseTransitions<16, decltype(states)>{states, 16});
  } else if (sigma > 0) {
    const auto states = scratch.template records<0>(layout.states, layout.state_width);
    run_with_transitions(q, k, v, out, channels, (int32_t)length, layout, scratch, token,
                         chain_budget_per_token, DenseTransitions<0, decltype(states)>{states, (int32_t)sigma});
  } else {
    const auto states = scratch.template records<5>(layout.states, layout.state_width);
    const auto edges = scratch.template records<4>(layout.edges, 4);
    const auto slots = scratch.array(layout.hash_slot);
    const HashedTransitions<decltype(states), decltype(edges), decltype(slots)> transitions{
        states, edges, slots, hash_capacity(length) - 1, edge_count};
    run_with_transitions(q, k, v, out, channels, (int32_t)length, layout, scratch, token,
                         chain_budget_per_token, transitions);
  }
}

}  // namespace heron_rosa
