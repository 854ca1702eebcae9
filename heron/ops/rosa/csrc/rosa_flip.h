// Suffix automaton for the ROSA bit-flip gradient estimator (CUDA kernels, CPU retrieval).
//
// One automaton holds the keys k[0..i-1] of one stream plus the query matcher state, exactly
// as spec/ROSA.md §2 defines QKV ROSA: step i first matches q[i] (the match may end at any
// key position j < i), then appends k[i]. A step returns the *retrieval index* j + 1 of the
// most recent occurrence of the longest matched suffix (the output is v[j + 1]), or -1.
//
// The storage is caller-provided (plain strided arrays, so the same code runs in a CUDA thread
// on an interleaved global-memory scratch buffer).
//
// No torch headers here: rosa_flip_cuda.cu includes this file and is compiled standalone.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define ROSA_FLIP_HD __host__ __device__ __forceinline__
#else
#define ROSA_FLIP_HD inline
#endif

namespace heron_rosa_flip {

struct Automaton {
  // Arrays sized for `max_states` states; `alphabet` transitions per state (-1 = none).
  int32_t* next;
  int32_t* link;
  int32_t* length;
  int32_t* last_end;
  int32_t alphabet;
  // Element e of every array lives at base[e * stride]: 1 on the CPU; on the GPU the automata of
  // neighbouring threads are interleaved so that equal accesses of a warp coalesce.
  int64_t stride;
  // Scalars.
  int32_t num_states;
  int32_t last;
  int32_t match_state;
  int32_t match_length;
  int32_t position;  // number of keys appended so far
};

// The automaton holds 2T states at most for T keys, plus the root.
ROSA_FLIP_HD int64_t automaton_states(int64_t length) { return 2 * length + 2; }

// Element accessors (every array is strided, see Automaton::stride).
ROSA_FLIP_HD int32_t& next_of(Automaton& a, int32_t state, int32_t symbol) {
  return a.next[((int64_t)state * a.alphabet + symbol) * a.stride];
}
ROSA_FLIP_HD int32_t& link_of(Automaton& a, int32_t state) { return a.link[(int64_t)state * a.stride]; }
ROSA_FLIP_HD int32_t& length_of(Automaton& a, int32_t state) {
  return a.length[(int64_t)state * a.stride];
}
ROSA_FLIP_HD int32_t& last_end_of(Automaton& a, int32_t state) {
  return a.last_end[(int64_t)state * a.stride];
}

// New state; its transitions are copied from `copy_from` (a clone) or empty (copy_from < 0).
ROSA_FLIP_HD int32_t new_state(Automaton& a, int32_t len, int32_t link, int32_t last_end,
                               int32_t copy_from) {
  const int32_t s = a.num_states++;
  length_of(a, s) = len;
  link_of(a, s) = link;
  last_end_of(a, s) = last_end;
  for (int32_t c = 0; c < a.alphabet; ++c)
    next_of(a, s, c) = copy_from >= 0 ? next_of(a, copy_from, c) : -1;
  return s;
}

ROSA_FLIP_HD void reset(Automaton& a) {
  a.num_states = 0;
  new_state(a, 0, -1, -1, -1);
  a.last = 0;
  a.match_state = 0;
  a.match_length = 0;
  a.position = 0;
}

// Append key symbol `key` at position a.position (suffix automaton extension). The matcher is
// kept in the state that holds strings of its length when a state is split.
ROSA_FLIP_HD void extend(Automaton& a, int32_t key) {
  const int32_t position = a.position++;
  const int32_t cur = new_state(a, length_of(a, a.last) + 1, -1, position, -1);
  int32_t p = a.last;
  while (p != -1 && next_of(a, p, key) < 0) {
    next_of(a, p, key) = cur;
    p = link_of(a, p);
  }
  if (p == -1) {
    link_of(a, cur) = 0;
  } else {
    const int32_t q = next_of(a, p, key);
    if (length_of(a, p) + 1 == length_of(a, q)) {
      link_of(a, cur) = q;
    } else {
      const int32_t clone =
          new_state(a, length_of(a, p) + 1, link_of(a, q), last_end_of(a, q), q);
      while (p != -1 && next_of(a, p, key) == q) {
        next_of(a, p, key) = clone;
        p = link_of(a, p);
      }
      link_of(a, q) = clone;
      link_of(a, cur) = clone;
      if (a.match_state == q && a.match_length <= length_of(a, clone)) a.match_state = clone;
    }
  }
  a.last = cur;
  // Every suffix of the keys now ends at `position` (the states on the suffix-link chain).
  for (int32_t s = link_of(a, cur); s > 0; s = link_of(a, s)) last_end_of(a, s) = position;
}

// One QKV ROSA step: match `query` against keys [0, position), then append `key`.
// Returns the retrieval index (j + 1 of the most recent longest match) or -1.
ROSA_FLIP_HD int32_t step(Automaton& a, int32_t query, int32_t key) {
  int32_t s = a.match_state;
  int32_t l = a.match_length;
  while (s != 0 && next_of(a, s, query) < 0) {
    s = link_of(a, s);
    if (l > length_of(a, s)) l = length_of(a, s);
  }
  const int32_t target = next_of(a, s, query);
  if (target >= 0) {
    s = target;
    l += 1;
  } else {
    s = 0;
    l = 0;
  }
  a.match_state = s;
  a.match_length = l;
  const int32_t retrieved = l > 0 ? last_end_of(a, s) + 1 : -1;
  extend(a, key);
  return retrieved;
}

}  // namespace heron_rosa_flip
