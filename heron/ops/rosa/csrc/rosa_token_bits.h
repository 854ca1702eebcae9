// Token ROSA on one 1-bit stream (symbols 0 and 1) by sorting the positions by their recent
// history; CPU only (included by rosa_cpu.cpp alone). Exact, or it declines the stream.
//
// Why: the automaton engine (rosa_core.h) costs ~13 dependent loads per token on random 1-bit
// streams (docs/benchmarks/rosa.md, "Why the per-token cost did not come down"). Here no step
// follows a chain longer than the answer's few candidates, and the loads of neighbouring tokens
// are independent, so the core overlaps them.
//
// Semantics (spec/ROSA.md §1): y[i] = x[j* + 1], where L* = max over j < i of LCS(i, j), the
// length of the longest common suffix of x[0..i] and x[0..j], and j* is the largest j < i with
// LCS(i, j) = L*; -1 when L* = 0 (x[i] never occurred before).
//
// 1. Key of position t: the last kKeySymbols symbols ending at t, x[t] most significant, two bits
//    per symbol: 1 for a 0, 2 for a 1, 0 for "before the stream". Padding differs from every real
//    symbol, so the common leading symbols of two keys never exceed the shorter history: for
//    j < i, lcp(key_i, key_j) = min(LCS(i, j), kKeySymbols) with no further cap.
// 2. Sort the positions by key: a counting sort on the first `bucket_bits` symbols (one bit each:
//    random streams leave ~1 position per bucket), then an insertion sort by the whole key, which
//    only moves positions inside their bucket. The buckets are ordered like the keys: a padded
//    symbol sorts below both real ones, and the bucket index pads with 0 bits, the smaller symbol.
// 3. In key order, the positions sharing their last L symbols form one contiguous run for every L,
//    and lcp with i falls off monotonically away from i. So L* is the larger lcp of i with its
//    nearest neighbours in key order among positions < i, and the positions j < i with
//    lcp >= L* are the contiguous run around i among them (short on random streams; scanned for
//    the largest j). Positions < i are kept as a doubly linked list over the ranks, visiting
//    i = T-1 down to 0 and unlinking each i after its query (the classic longest-previous-factor
//    trick): the list neighbours of i are then exactly the nearest earlier positions.
//
// The stream is declined (return false, the caller runs the general engine, which overwrites any
// output written here) when a symbol is not 0 or 1, when some L* reaches kMatchCap (the key would
// truncate it: constant and periodic streams do at once, random ones at T = 4096 about once in
// 200-300 streams), or when the insertion sort or the scans exceed their work budgets (skewed
// streams whose buckets or runs are long).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace heron_rosa_bits {

constexpr int kKeySymbols = 32;           // two bits each in a uint64
constexpr int32_t kMatchCap = 31;         // lcp values are exact below this (see symbol_lcp)
constexpr int64_t kSortShiftsPerToken = 8;
constexpr int64_t kScanStepsPerToken = 8;

// Common leading symbols of two keys, min(true value, kMatchCap): the `| 1` keeps clz defined
// when the keys are equal, so 31 and 32 equal symbols both give 31.
inline int32_t symbol_lcp(uint64_t a, uint64_t b) {
  return __builtin_clzll((a ^ b) | 1) >> 1;
}

// Per-worker buffers, grown on demand and reused across streams.
struct Workspace {
  std::vector<uint64_t> key_by_rank;  // ranks 0 and length + 1 are sentinels (key 0: lcp 0)
  std::vector<int32_t> entry_by_rank; // (position << 1) | x[position + 1]; -1 for sentinels
  std::vector<int32_t> prev, next;    // the list of ranks of positions < i
  std::vector<int32_t> rank_of;       // by position
  std::vector<int32_t> bucket_of;     // by position, then the counting sort's cursors
  std::vector<uint64_t> key_of;       // by position
  std::vector<int32_t> count;

  void reserve(int32_t length, int32_t buckets) {
    const size_t ranks = static_cast<size_t>(length) + 2;
    if (key_by_rank.size() < ranks) {
      key_by_rank.resize(ranks);
      entry_by_rank.resize(ranks);
      prev.resize(ranks);
      next.resize(ranks);
      rank_of.resize(ranks);
      bucket_of.resize(ranks);
      key_of.resize(ranks);
    }
    count.assign(static_cast<size_t>(buckets) + 1, 0);
  }
};

// x, out: the stream's first element and its time stride. Returns false when declined (above).
inline bool token_rosa_bits(const int64_t* x, int64_t* out, int64_t stride, int32_t length,
                            Workspace& ws) {
  if (length <= 0) return true;
  // About one bucket per position; at least 1 bit, at most 16 (a 256 KB count table).
  int bucket_bits = 1;
  while (bucket_bits < 16 && (int64_t(1) << bucket_bits) < length) ++bucket_bits;
  const int32_t buckets = int32_t(1) << bucket_bits;
  ws.reserve(length, buckets);
  uint64_t* key_by_rank = ws.key_by_rank.data();
  int32_t* entry_by_rank = ws.entry_by_rank.data();
  int32_t* prev = ws.prev.data();
  int32_t* next = ws.next.data();
  int32_t* rank_of = ws.rank_of.data();
  int32_t* bucket_of = ws.bucket_of.data();
  uint64_t* key_of = ws.key_of.data();
  int32_t* count = ws.count.data();

  // 1. Keys, bucket indices, the symbol after each position (kept in its sort entry).
  uint64_t key = 0, bits = 0;
  int32_t* next_symbol = rank_of;  // rank_of is filled only after the sort
  for (int32_t t = 0; t < length; ++t) {
    const int64_t symbol = x[t * stride];
    if (static_cast<uint64_t>(symbol) > 1) return false;
    key = (key >> 2) | (static_cast<uint64_t>(symbol + 1) << 62);
    bits = (bits >> 1) | (static_cast<uint64_t>(symbol) << 63);
    key_of[t] = key;
    const int32_t bucket = static_cast<int32_t>(bits >> (64 - bucket_bits));
    bucket_of[t] = bucket;
    ++count[bucket + 1];
    if (t > 0) next_symbol[t - 1] = static_cast<int32_t>(symbol);
  }
  next_symbol[length - 1] = 0;  // never read: j* < i <= T - 1

  // 2. Counting sort into ranks 1..length (stable in t), then insertion sort by the whole key.
  count[0] = 1;
  for (int32_t b = 0; b < buckets; ++b) count[b + 1] += count[b];
  for (int32_t t = 0; t < length; ++t) {
    const int32_t rank = count[bucket_of[t]]++;
    key_by_rank[rank] = key_of[t];
    entry_by_rank[rank] = (t << 1) | next_symbol[t];
  }
  int64_t shifts_left = kSortShiftsPerToken * int64_t(length) + 64;
  for (int32_t rank = 2; rank <= length; ++rank) {
    const uint64_t moving = key_by_rank[rank];
    if (moving >= key_by_rank[rank - 1]) continue;
    const int32_t entry = entry_by_rank[rank];
    int32_t hole = rank;
    do {
      key_by_rank[hole] = key_by_rank[hole - 1];
      entry_by_rank[hole] = entry_by_rank[hole - 1];
      --hole;
    } while (hole > 1 && moving < key_by_rank[hole - 1]);
    key_by_rank[hole] = moving;
    entry_by_rank[hole] = entry;
    shifts_left -= rank - hole;
    if (shifts_left < 0) return false;
  }

  // 3. Sentinels, the list of all ranks, then the queries from the last position down.
  key_by_rank[0] = key_by_rank[length + 1] = 0;
  entry_by_rank[0] = entry_by_rank[length + 1] = -1;
  for (int32_t rank = 0; rank <= length + 1; ++rank) {
    prev[rank] = rank - 1;
    next[rank] = rank + 1;
  }
  for (int32_t rank = 1; rank <= length; ++rank) rank_of[entry_by_rank[rank] >> 1] = rank;
  int64_t steps_left = kScanStepsPerToken * int64_t(length) + 64;
  for (int32_t i = length - 1; i >= 0; --i) {
    const int32_t rank = rank_of[i];
    const uint64_t key_i = key_by_rank[rank];
    const int32_t left = prev[rank], right = next[rank];
    const int32_t lcp_left = symbol_lcp(key_i, key_by_rank[left]);
    const int32_t lcp_right = symbol_lcp(key_i, key_by_rank[right]);
    const int32_t match = std::max(lcp_left, lcp_right);
    int32_t best = -1;
    if (match >= kMatchCap) return false;
    if (match > 0) {
      // The run with lcp >= match, one side at a time; entries pack the position above the next
      // symbol, so the largest is the latest position and carries the answer. Plain loops beat
      // branch-free selects here (docs/benchmarks/rosa.md): the run goes past the nearest
      // neighbour for ~28% of the queries, and speculation overlaps the loads of the next query.
      for (int32_t r = left; symbol_lcp(key_i, key_by_rank[r]) >= match; r = prev[r]) {
        best = std::max(best, entry_by_rank[r]);
        --steps_left;
      }
      for (int32_t r = right; symbol_lcp(key_i, key_by_rank[r]) >= match; r = next[r]) {
        best = std::max(best, entry_by_rank[r]);
        --steps_left;
      }
      if (steps_left < 0) return false;
    }
    out[i * stride] = match > 0 ? (best & 1) : -1;
    next[left] = right;
    prev[right] = left;
  }
  return true;
}

}  // namespace heron_rosa_bits
