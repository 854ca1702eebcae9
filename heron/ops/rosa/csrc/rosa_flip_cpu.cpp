// CPU bit-flip gradient estimator for ROSA (spec/ROSA.md §4), OpenMP over streams.
//
// Inputs are symbol streams [S, T] (int64) and a value table val[S, T, 2^bits + 1]: val[s][i][y+1]
// is the contribution of output symbol y (y = -1: no match) at position i to
// phi = sum_i g[i] . out_i. For every flip (position t, bit m) the kernel returns
// phi(flipped stream) - phi(original stream), re-running only positions t .. t + window - 1 from
// the base run's state at t - 1 (the naive definition re-runs the whole stream per flip).
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "rosa_flip.h"
#include "rosa_flip_dp.h"

namespace {

// Suffix automaton of one stream for `retrieval` (private storage, stride 1).
struct AutomatonStorage {
  std::vector<int32_t> next, link, length, last_end;
  heron_rosa_flip::Automaton automaton;

  AutomatonStorage(int64_t T, int32_t alphabet) {
    const int64_t states = heron_rosa_flip::automaton_states(T);
    next.assign(states * alphabet, -1);
    link.assign(states, -1);
    length.assign(states, 0);
    last_end.assign(states, -1);
    automaton.next = next.data();
    automaton.link = link.data();
    automaton.length = length.data();
    automaton.last_end = last_end.data();
    automaton.alphabet = alphabet;
    automaton.stride = 1;
  }
};

// ---------------------------------------------------------------------------------------------
// Match-set formulation (the CPU flip kernel).
//
// For position i let S_L(i) be the set of key end positions j < i with
// k[j-L+1 .. j] == q[i-L+1 .. i]. Then S_1(i) = {j < i : k[j] = q[i]} and
// S_L(i) = (S_{L-1}(i-1) shifted by one) & {j : k[j] = q[i]}, so the list S_1(i) .. S_l(i) (l the
// longest non-empty one) follows from the list of i-1 with l + 1 bitset operations, and the ROSA
// output is v[max(S_l(i)) + 1] (spec §2). With T-bit bitsets this is branch-light word
// arithmetic, cheaper per position than a suffix-automaton step that must be undone afterwards,
// and a flip at t only needs the base list of t-1 to re-run positions t, t+1, ... A query flip
// stops early: once neither run has a match reaching back to t, both lists agree from there on.

struct MatchSets {
  int64_t T = 0, W = 0;
  int32_t alphabet = 0;
  std::vector<uint64_t> keys;       // [alphabet][W]: bit j of keys[c] = (k[j] == c)
  std::vector<uint64_t> base;       // base lists, position i at base_offset[i], (count + 1) sets
  std::vector<int64_t> base_offset;
  std::vector<int32_t> base_count;  // longest match length of the base run at i
  std::vector<uint64_t> list_a, list_b;
  std::vector<int32_t> q, k, v, retrieved;
  std::vector<double> base_value;

  MatchSets(int64_t length, int32_t alphabet_size) {
    T = length;
    W = (length + 63) / 64;
    alphabet = alphabet_size;
    keys.assign(alphabet * W, 0);
    base_offset.resize(length + 1);
    base_count.resize(length);
    list_a.resize((length + 2) * W);
    list_b.resize((length + 2) * W);
    q.resize(length);
    k.resize(length);
    v.resize(length);
    retrieved.resize(length);
    base_value.resize(length);
  }

  static uint64_t below(int64_t i, int64_t word) {  // bits j < i of word `word`
    const int64_t first = word * 64;
    if (i >= first + 64) return ~uint64_t(0);
    if (i <= first) return 0;
    return (uint64_t(1) << (i - first)) - 1;
  }

  // List of position i (query symbol `query`) from the list of i - 1; returns its length l and
  // writes sets 1 .. l (and the empty set l + 1 when l < prev_count + 1) to `out`.
  // kWords > 0 fixes the bitset width at compile time (T <= 64 * kWords) so the loops unroll.
  template <int kWords>
  int32_t advance(int64_t i, int32_t query, const uint64_t* prev, int32_t prev_count,
                  uint64_t* out) const {
    const int64_t W = kWords > 0 ? kWords : this->W;
    const uint64_t* match = keys.data() + (int64_t)query * W;
    uint64_t any = 0;
    for (int64_t w = 0; w < W; ++w) {
      out[w] = match[w] & below(i, w);
      any |= out[w];
    }
    if (!any) return 0;
    int32_t length = 1;
    while (length <= prev_count) {
      const uint64_t* from = prev + (int64_t)(length - 1) * W;
      uint64_t* to = out + (int64_t)length * W;
      uint64_t carry = 0;
      any = 0;
      for (int64_t w = 0; w < W; ++w) {
        to[w] = ((from[w] << 1) | carry) & match[w];
        carry = from[w] >> 63;
        any |= to[w];
      }
      if (!any) break;
      ++length;
    }
    return length;
  }

  // Retrieval index (largest j of the longest match, plus one) of a list, -1 when empty.
  template <int kWords>
  int32_t retrieval_of(const uint64_t* list, int32_t length) const {
    const int64_t W = kWords > 0 ? kWords : this->W;
    if (length == 0) return -1;
    const uint64_t* last = list + (int64_t)(length - 1) * W;
    for (int64_t w = W - 1; w >= 0; --w)
      if (last[w]) return static_cast<int32_t>(w * 64 + 63 - __builtin_clzll(last[w]) + 1);
    return -1;  // unreachable: a counted set is non-empty
  }

  void set_key(int64_t j, int32_t symbol, bool on) {
    uint64_t& word = keys[(int64_t)symbol * W + j / 64];
    const uint64_t bit = uint64_t(1) << (j % 64);
    word = on ? (word | bit) : (word & ~bit);
  }

  template <int kWords, typename scalar_t>
  void base_run(const scalar_t* val, int64_t table) {
    std::fill(keys.begin(), keys.end(), 0);
    for (int64_t j = 0; j < T; ++j) set_key(j, k[j], true);
    base.clear();
    const uint64_t* prev = nullptr;
    int32_t prev_count = 0;
    for (int64_t i = 0; i < T; ++i) {
      const int64_t offset = static_cast<int64_t>(base.size());
      base_offset[i] = offset;
      base.resize(offset + (int64_t)(prev_count + 2) * W);
      if (i > 0) prev = base.data() + base_offset[i - 1];  // resize may have moved the data
      const int32_t count = advance<kWords>(i, q[i], prev, prev_count, base.data() + offset);
      base.resize(offset + (int64_t)(count + 1) * W);
      base_count[i] = count;
      const int32_t r = retrieval_of<kWords>(base.data() + offset, count);
      retrieved[i] = r;
      const int32_t y = r < 0 ? -1 : v[r];
      base_value[i] = static_cast<double>(val[i * table + y + 1]);
      prev_count = count;
    }
  }
};

// Which input of the QKV op a flip changes. Token ROSA flips all three at once.
enum FlipTarget { kToken = 0, kQuery = 1, kKey = 2 };

template <int kWords, typename scalar_t>
double run_flip(MatchSets& ms, int64_t window, const scalar_t* val, int64_t table, int64_t t,
                int32_t flipped, FlipTarget target) {
  const int64_t T = ms.T;
  if (target != kQuery) {  // the key at t moves to the flipped symbol's set
    ms.set_key(t, ms.k[t], false);
    ms.set_key(t, flipped, true);
  }
  const uint64_t* prev = t > 0 ? ms.base.data() + ms.base_offset[t - 1] : nullptr;
  int32_t prev_count = t > 0 ? ms.base_count[t - 1] : 0;
  uint64_t* out = ms.list_a.data();
  uint64_t* spare = ms.list_b.data();
  const int64_t end = std::min<int64_t>(T, t + window);
  double delta = 0.0;
  for (int64_t i = t; i < end; ++i) {
    const int32_t query = (i == t && target != kKey) ? flipped : ms.q[i];
    const int32_t count = ms.advance<kWords>(i, query, prev, prev_count, out);
    const int32_t r = ms.retrieval_of<kWords>(out, count);
    int32_t y = -1;
    if (r >= 0) y = (target == kToken && r == t) ? flipped : ms.v[r];
    delta += static_cast<double>(val[i * table + y + 1]) - ms.base_value[i];
    // Keys unchanged and no match of either run reaches back to t: identical from here on.
    if (target == kQuery && count <= i - t && ms.base_count[i] <= i - t) break;
    prev = out;
    prev_count = count;
    std::swap(out, spare);
  }
  if (target != kQuery) {
    ms.set_key(t, flipped, false);
    ms.set_key(t, ms.k[t], true);
  }
  return delta;
}

template <int kWords, typename scalar_t>
void flip_stream(MatchSets& ms, int64_t bits, int64_t window, const scalar_t* val, bool token,
                 scalar_t* dq, scalar_t* dk, scalar_t* dv) {
  const int64_t T = ms.T;
  const int64_t table = (int64_t(1) << bits) + 1;
  ms.base_run<kWords>(val, table);
  if (dv != nullptr) {
    // A value flip at t changes exactly the outputs that retrieve position t.
    for (int64_t i = 0; i < T; ++i) {
      const int32_t r = ms.retrieved[i];
      if (r < 0) continue;
      for (int64_t m = 0; m < bits; ++m) {
        const int32_t y = ms.v[r] ^ (1 << m);
        dv[r * bits + m] += static_cast<scalar_t>(static_cast<double>(val[i * table + y + 1]) -
                                                  ms.base_value[i]);
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t m = 0; m < bits; ++m) {
      if (token) {
        dq[t * bits + m] = static_cast<scalar_t>(
            run_flip<kWords>(ms, window, val, table, t, ms.q[t] ^ (1 << m), kToken));
        continue;
      }
      if (dq != nullptr)
        dq[t * bits + m] = static_cast<scalar_t>(
            run_flip<kWords>(ms, window, val, table, t, ms.q[t] ^ (1 << m), kQuery));
      if (dk != nullptr)
        dk[t * bits + m] = static_cast<scalar_t>(
            run_flip<kWords>(ms, window, val, table, t, ms.k[t] ^ (1 << m), kKey));
    }
  }
}

template <typename scalar_t>
void flip_all_streams(const int64_t* q_ptr, const int64_t* k_ptr, const int64_t* v_ptr,
                      const scalar_t* val_ptr, scalar_t* dq_ptr, scalar_t* dk_ptr,
                      scalar_t* dv_ptr, int64_t S, int64_t T, int64_t bits, int64_t window,
                      bool token, int threads) {
  const int32_t alphabet = 1 << bits;
#pragma omp parallel num_threads(threads)
  {
    MatchSets w(T, alphabet);
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t i = 0; i < T; ++i) {
        w.q[i] = static_cast<int32_t>(q_ptr[s * T + i]);
        w.k[i] = static_cast<int32_t>(k_ptr[s * T + i]);
        w.v[i] = static_cast<int32_t>(v_ptr[s * T + i]);
      }
      const int64_t off = s * T * bits;
      const scalar_t* stream_val = val_ptr + s * T * (alphabet + 1);
      scalar_t* sq = dq_ptr ? dq_ptr + off : nullptr;
      scalar_t* sk = dk_ptr ? dk_ptr + off : nullptr;
      scalar_t* sv = dv_ptr ? dv_ptr + off : nullptr;
      if (w.W == 1)
        flip_stream<1, scalar_t>(w, bits, window, stream_val, token, sq, sk, sv);
      else if (w.W == 2)
        flip_stream<2, scalar_t>(w, bits, window, stream_val, token, sq, sk, sv);
      else
        flip_stream<0, scalar_t>(w, bits, window, stream_val, token, sq, sk, sv);
    }
  }
}

void check_streams(const torch::Tensor& t, const char* name, int64_t S, int64_t T) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kInt64, name, " must be int64");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == S && t.size(1) == T, name, " must have shape [S, T]");
}

// The diagonal-DP algorithm of the CUDA kernel (rosa_flip_dp.h) run on the host with a one-lane
// "warp": for the tests, which check it against the match-set kernel above (T <= 512).
template <int N, typename scalar_t>
void flip_dp_streams(const int64_t* q_ptr, const int64_t* k_ptr, const int64_t* v_ptr,
                     const scalar_t* val_ptr, scalar_t* dq_ptr, scalar_t* dk_ptr,
                     scalar_t* dv_ptr, int64_t S, int64_t T, int64_t bits, int64_t window,
                     bool token) {
  const int64_t table = (int64_t(1) << bits) + 1;
  std::vector<uint8_t> q(T), k(T), v(T);
  std::vector<double> base_value(T);
  std::vector<uint32_t> base_far(T);
  std::vector<int16_t> base_count(T), symbols(T);
  const heron_rosa_flip::DPScratch scratch{base_value.data(), base_far.data(), base_count.data(),
                                           symbols.data()};
  const heron_rosa_flip::HostWarp warp;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < T; ++i) {
      q[i] = static_cast<uint8_t>(q_ptr[s * T + i]);
      k[i] = static_cast<uint8_t>(k_ptr[s * T + i]);
      v[i] = static_cast<uint8_t>(v_ptr[s * T + i]);
    }
    const int64_t off = s * T * bits;
    heron_rosa_flip::dp_flip_stream<N>(
        warp, q.data(), k.data(), v.data(), val_ptr + s * T * table, static_cast<int32_t>(T),
        static_cast<int32_t>(bits), static_cast<int32_t>(window), token,
        dq_ptr ? dq_ptr + off : nullptr, dk_ptr ? dk_ptr + off : nullptr,
        dv_ptr ? dv_ptr + off : nullptr, scratch);
  }
}

// Shared driver: token mode uses q only (q = k = v); QKV mode fills the requested gradients.
// diagonal_dp: run the CUDA kernel's algorithm on the host instead (tests; T <= 512).
std::vector<torch::Tensor> flip_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                     torch::Tensor val, int64_t bits, int64_t window, bool token,
                                     bool want_q, bool want_k, bool want_v,
                                     bool diagonal_dp = false) {
  TORCH_CHECK(bits >= 1 && bits <= 8, "bits must be in 1..8");
  TORCH_CHECK(val.dim() == 3, "val must be [S, T, 2^bits + 1]");
  const int64_t S = val.size(0), T = val.size(1);
  TORCH_CHECK(val.size(2) == (int64_t(1) << bits) + 1, "val must be [S, T, 2^bits + 1]");
  TORCH_CHECK(val.device().is_cpu(), "val must be a CPU tensor");
  check_streams(q, "q", S, T);
  check_streams(k, "k", S, T);
  check_streams(v, "v", S, T);
  if (window <= 0 || window > T) window = T;
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  val = val.contiguous();
  auto options = val.options();
  torch::Tensor dq = want_q ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  torch::Tensor dk = want_k ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  torch::Tensor dv = want_v ? torch::zeros({S, T, bits}, options) : torch::Tensor();
  const int64_t* q_ptr = q.data_ptr<int64_t>();
  const int64_t* k_ptr = k.data_ptr<int64_t>();
  const int64_t* v_ptr = v.data_ptr<int64_t>();
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(S)));
  if (diagonal_dp) {
    TORCH_CHECK(T <= heron_rosa_flip::kDPMaxLength, "flip_dp_host: T must be <= ",
                heron_rosa_flip::kDPMaxLength);
    AT_DISPATCH_FLOATING_TYPES(val.scalar_type(), "rosa_flip_dp_host", [&] {
      auto run = [&](auto n) {
        flip_dp_streams<decltype(n)::value, scalar_t>(
            q_ptr, k_ptr, v_ptr, val.data_ptr<scalar_t>(),
            want_q ? dq.data_ptr<scalar_t>() : nullptr, want_k ? dk.data_ptr<scalar_t>() : nullptr,
            want_v ? dv.data_ptr<scalar_t>() : nullptr, S, T, bits, window, token);
      };
      if (T <= 64)
        run(std::integral_constant<int, 64>());
      else
        run(std::integral_constant<int, heron_rosa_flip::kDPMaxLength>());
    });
    return {dq, dk, dv};
  }

  // The OpenMP region lives in a function template: a pragma cannot sit inside the dispatch macro.
  AT_DISPATCH_FLOATING_TYPES(val.scalar_type(), "rosa_flip_cpu", [&] {
    flip_all_streams<scalar_t>(q_ptr, k_ptr, v_ptr, val.data_ptr<scalar_t>(),
                               want_q ? dq.data_ptr<scalar_t>() : nullptr,
                               want_k ? dk.data_ptr<scalar_t>() : nullptr,
                               want_v ? dv.data_ptr<scalar_t>() : nullptr, S, T, bits, window,
                               token, threads);
  });
  return {dq, dk, dv};
}

torch::Tensor flip_token(torch::Tensor x, torch::Tensor val, int64_t bits, int64_t window) {
  return flip_impl(x, x, x, val, bits, window, true, true, false, false)[0];
}

std::vector<torch::Tensor> flip_qkv(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor val, int64_t bits, int64_t window, bool want_q,
                                    bool want_k, bool want_v) {
  return flip_impl(q, k, v, val, bits, window, false, want_q, want_k, want_v);
}

std::vector<torch::Tensor> flip_dp_host(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                        torch::Tensor val, int64_t bits, int64_t window,
                                        bool token, bool want_q, bool want_k, bool want_v) {
  if (token) return flip_impl(q, q, q, val, bits, window, true, true, false, false, true);
  return flip_impl(q, k, v, val, bits, window, false, want_q, want_k, want_v, true);
}

// Retrieval index of every position (j + 1 of the most recent longest match, -1 = none).
torch::Tensor retrieval(torch::Tensor q, torch::Tensor k, int64_t alphabet) {
  TORCH_CHECK(q.dim() == 2, "q must be [S, T]");
  const int64_t S = q.size(0), T = q.size(1);
  check_streams(q, "q", S, T);
  check_streams(k, "k", S, T);
  TORCH_CHECK(alphabet >= 1 && alphabet <= 256, "alphabet must be in 1..256");
  q = q.contiguous();
  k = k.contiguous();
  auto out = torch::empty({S, T}, q.options());
  const int64_t* q_ptr = q.data_ptr<int64_t>();
  const int64_t* k_ptr = k.data_ptr<int64_t>();
  int64_t* out_ptr = out.data_ptr<int64_t>();
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(S)));
#pragma omp parallel num_threads(threads)
  {
    AutomatonStorage w(T, static_cast<int32_t>(alphabet));
#pragma omp for schedule(dynamic, 16)
    for (int64_t s = 0; s < S; ++s) {
      heron_rosa_flip::reset(w.automaton);
      for (int64_t i = 0; i < T; ++i)
        out_ptr[s * T + i] = heron_rosa_flip::step(
            w.automaton, static_cast<int32_t>(q_ptr[s * T + i]), static_cast<int32_t>(k_ptr[s * T + i]));
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("flip_token", &flip_token, "bit-flip phi differences for token/channel ROSA [S, T, bits]");
  m.def("flip_qkv", &flip_qkv, "bit-flip phi differences for QKV ROSA (dq, dk, dv)");
  m.def("retrieval", &retrieval, "retrieval index j + 1 of every position, -1 = no match");
  m.def("flip_dp_host", &flip_dp_host,
        "the CUDA kernel's diagonal-DP flip algorithm run on the host (tests; T <= 512)");
}
