// C++ CPU ROSA: the whole-sequence forward (rosa_core.h, parallel over streams, GIL released) and
// the incremental automata behind OnlineROSA.
#include <torch/extension.h>

#include <algorithm>

#include <ATen/Parallel.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "rosa_core.h"
#include "rosa_token_bits.h"

namespace {

void check_streams(const torch::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(tensor.scalar_type() == torch::kInt64, name, " must be int64");
  TORCH_CHECK(tensor.dim() == 3, name, " must be [B, T, S]");
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

// q, k, v: contiguous int64 [B, T, S], symbols already validated (0 <= s < 2**31).
// sigma > 0: every key symbol is below sigma (dense transitions); sigma == 0: hashed transitions.
// chain_budget_per_token: see rosa_run_stream (0 = two-phase algorithm only).
// token_bits: token ROSA on 1-bit streams first tries the sorting algorithm of rosa_token_bits.h
// (~1.3x faster than the automaton on random bits); a stream it declines goes to the engine.
// False runs the engine alone (tests use it to reach the engine's paths on 1-bit streams).
torch::Tensor rosa_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t sigma,
                           int64_t chain_budget_per_token, bool token_bits) {
  check_streams(q, "q");
  check_streams(k, "k");
  check_streams(v, "v");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "q, k and v must have one shape");
  TORCH_CHECK(sigma >= 0 && sigma <= heron_rosa::kDenseMaxSigma, "sigma out of range");
  TORCH_CHECK(chain_budget_per_token >= 0, "chain_budget_per_token must be >= 0");
  const int64_t batch = q.size(0), length = q.size(1), channels = q.size(2);
  TORCH_CHECK(length < (int64_t(1) << 29), "T is too long for 32-bit state indices");
  auto out = torch::empty_like(q);
  const int64_t num_streams = batch * channels;
  if (num_streams == 0 || length == 0) return out;
  const int64_t* q_ptr = q.data_ptr<int64_t>();
  const int64_t* k_ptr = k.data_ptr<int64_t>();
  const int64_t* v_ptr = v.data_ptr<int64_t>();
  int64_t* out_ptr = out.data_ptr<int64_t>();
  const int64_t workspace_size = heron_rosa::make_layout(length, sigma).total;
  // Token ROSA passes one tensor as q and k: the automaton then needs no separate matcher.
  const bool token = q_ptr == k_ptr;
  // sigma == 2: every key is 0 or 1 (the sorting path checks its stream again regardless). In
  // token mode v is q as well, so the answer x[j* + 1] is a key.
  const bool try_bits = token_bits && token && q_ptr == v_ptr && sigma == 2;
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, num_streams, 1, [&](int64_t begin, int64_t end) {
      // One workspace per worker, reused for each stream it runs: O(T) memory per stream in flight.
      std::vector<int32_t> workspace(workspace_size);
      const heron_rosa::Scratch<1> scratch{workspace.data(), 1, 0};
      int32_t edge_count = 0;
      heron_rosa_bits::Workspace bits_workspace;
      for (int64_t stream = begin; stream < end; ++stream) {
        if (try_bits) {
          const int64_t base = (stream / channels) * length * channels + stream % channels;
          if (heron_rosa_bits::token_rosa_bits(q_ptr + base, out_ptr + base, channels,
                                               static_cast<int32_t>(length), bits_workspace))
            continue;
        }
        heron_rosa::rosa_run_stream(q_ptr, k_ptr, v_ptr, out_ptr, stream, length, channels, sigma,
                                    token, chain_budget_per_token, scratch, &edge_count);
      }
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Incremental QKV ROSA for one stream.
//
// The official automaton stores, per state, the last end position of its strings and updates it
// on the whole suffix-link chain at every append, which is quadratic on constant or periodic
// streams. A stream starts that way (the fastest on random-like streams) under a budget of chain
// steps (the token bucket of rosa_core.h). When the budget runs out, the stream switches for good
// to a link-cut tree over its suffix links whose preferred paths carry a lazy "assign" tag: the
// update "every ancestor of the new state ends at position p" becomes one access plus one tag, and
// a clone a cut plus links, each amortized O(log T). The switch is exact and O(T): every state
// becomes a one-node preferred path hanging from its suffix link, carrying its last end position.
class OnlineStream {
 public:
  OnlineStream() { new_state(0, -1); }

  int64_t push(int64_t query, int64_t key, int64_t value) {
    const int32_t symbol = static_cast<int32_t>(query);
    int32_t next = get(matched_, symbol);
    while (matched_ != 0 && next < 0) {
      matched_ = link_[matched_];
      matched_len_ = std::min(matched_len_, len_[matched_]);
      next = get(matched_, symbol);
    }
    if (next >= 0) {
      matched_ = next;
      matched_len_ += 1;
    } else {
      matched_ = 0;
      matched_len_ = 0;
    }
    queries_.push_back(symbol);
    values_.push_back(static_cast<int32_t>(value));
    int64_t result = -1;
    if (matched_ != 0) {
      // Splaying pushes every pending tag of the node's preferred path down to it, which is all
      // that determines its value; no need to change the preferred paths with an access.
      if (link_cut_) splay(matched_);
      result = values_[static_cast<size_t>(node_value_[matched_]) + 1];
    }
    keys_.push_back(static_cast<int32_t>(key));
    append_key(static_cast<int32_t>(key));
    return result;
  }

  int64_t length() const { return static_cast<int64_t>(keys_.size()); }
  const std::vector<int32_t>& queries() const { return queries_; }
  const std::vector<int32_t>& keys() const { return keys_; }
  const std::vector<int32_t>& values() const { return values_; }

 private:
  static constexpr int32_t kNoTag = INT32_MIN;

  // ---- suffix automaton
  int32_t new_state(int32_t length, int32_t link) {
    len_.push_back(length);
    link_.push_back(link);
    first_edge_.push_back(-1);
    child_left_.push_back(-1);
    child_right_.push_back(-1);
    tree_parent_.push_back(-1);
    node_value_.push_back(-1);
    node_tag_.push_back(kNoTag);
    return static_cast<int32_t>(len_.size()) - 1;
  }

  static uint64_t edge_hash(int32_t state, int32_t symbol) {
    uint64_t h = (static_cast<uint64_t>(static_cast<uint32_t>(state)) << 32) |
                 static_cast<uint32_t>(symbol);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
  }

  size_t find_slot(int32_t state, int32_t symbol) const {
    const size_t mask = slots_.size() - 1;
    size_t slot = edge_hash(state, symbol) & mask;
    while (true) {
      const int32_t edge = slots_[slot];
      if (edge < 0 || (edge_state_[edge] == state && edge_symbol_[edge] == symbol)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  int32_t get(int32_t state, int32_t symbol) const {
    if (slots_.empty()) return -1;
    const int32_t edge = slots_[find_slot(state, symbol)];
    return edge < 0 ? -1 : edge_target_[edge];
  }

  void grow_table() {
    size_t capacity = slots_.empty() ? 16 : slots_.size() * 2;
    slots_.assign(capacity, -1);
    for (int32_t edge = 0; edge < static_cast<int32_t>(edge_state_.size()); ++edge)
      slots_[find_slot(edge_state_[edge], edge_symbol_[edge])] = edge;
  }

  void set(int32_t state, int32_t symbol, int32_t target) {
    if (2 * (edge_state_.size() + 1) > slots_.size()) grow_table();
    const size_t slot = find_slot(state, symbol);
    int32_t edge = slots_[slot];
    if (edge < 0) {
      edge = static_cast<int32_t>(edge_state_.size());
      edge_state_.push_back(state);
      edge_symbol_.push_back(symbol);
      edge_target_.push_back(target);
      edge_next_.push_back(first_edge_[state]);
      first_edge_[state] = edge;
      slots_[slot] = edge;
    } else {
      edge_target_[edge] = target;
    }
  }

  void append_key(int32_t symbol) {
    const int32_t position = static_cast<int32_t>(keys_.size()) - 1;
    const int32_t cur = new_state(len_[last_] + 1, -1);
    int32_t p = last_;
    int32_t target = -1;
    while (p != -1) {
      target = get(p, symbol);
      if (target >= 0) break;
      set(p, symbol, cur);
      p = link_[p];
    }
    if (p == -1) {
      link_[cur] = 0;
    } else if (len_[p] + 1 == len_[target]) {
      link_[cur] = target;
    } else {
      const int32_t clone = new_state(len_[p] + 1, link_[target]);
      for (int32_t edge = first_edge_[target]; edge >= 0; edge = edge_next_[edge])
        set(clone, edge_symbol_[edge], edge_target_[edge]);
      while (p != -1 && get(p, symbol) == target) {
        set(p, symbol, clone);
        p = link_[p];
      }
      // In the link-cut tree the clone takes the target's place under its old parent. Its value
      // is set by the update below either way (it is an ancestor of cur).
      if (link_cut_) {
        tree_link(clone, link_[target]);
        tree_cut(target);
        tree_link(target, clone);
      }
      link_[target] = clone;
      link_[cur] = clone;
      if (matched_ == target && matched_len_ <= len_[clone]) matched_ = clone;
    }
    last_ = cur;
    // Every suffix of the keys now ends at `position`: assign it on the path cur -> root.
    if (!link_cut_) {
      node_value_[cur] = position;
      allowance_ += heron_rosa::kDefaultChainBudgetPerToken;
      int32_t state = link_[cur];
      for (; state > 0 && allowance_ >= 0; state = link_[state], --allowance_)
        node_value_[state] = position;
      if (state <= 0) return;
      switch_to_link_cut();  // the states already assigned get the same value again below
    } else {
      tree_link(cur, link_[cur]);
    }
    access(cur);
    apply_tag(cur, position);
  }

  void switch_to_link_cut() {
    link_cut_ = true;
    for (size_t state = 0; state < len_.size(); ++state) {
      tree_parent_[state] = link_[state];
      child_left_[state] = child_right_[state] = -1;
      node_tag_[state] = kNoTag;
    }
  }

  // ---- link-cut tree over the suffix links (rooted at state 0, no re-rooting needed)
  bool is_splay_root(int32_t x) const {
    const int32_t p = tree_parent_[x];
    return p < 0 || (child_left_[p] != x && child_right_[p] != x);
  }
  void apply_tag(int32_t x, int32_t value) {
    if (x < 0) return;
    node_value_[x] = value;
    node_tag_[x] = value;
  }
  void push_down(int32_t x) {
    if (node_tag_[x] != kNoTag) {
      apply_tag(child_left_[x], node_tag_[x]);
      apply_tag(child_right_[x], node_tag_[x]);
      node_tag_[x] = kNoTag;
    }
  }
  void rotate(int32_t x) {
    const int32_t p = tree_parent_[x], g = tree_parent_[p];
    const bool p_was_root = is_splay_root(p);
    if (child_left_[p] == x) {
      const int32_t b = child_right_[x];
      child_left_[p] = b;
      if (b >= 0) tree_parent_[b] = p;
      child_right_[x] = p;
    } else {
      const int32_t b = child_left_[x];
      child_right_[p] = b;
      if (b >= 0) tree_parent_[b] = p;
      child_left_[x] = p;
    }
    tree_parent_[p] = x;
    tree_parent_[x] = g;
    if (!p_was_root) {
      if (child_left_[g] == p) child_left_[g] = x;
      else child_right_[g] = x;
    }
  }
  void splay(int32_t x) {
    // Push pending tags from the top of x's splay tree down to x before rotating.
    splay_stack_.clear();
    int32_t y = x;
    splay_stack_.push_back(y);
    while (!is_splay_root(y)) {
      y = tree_parent_[y];
      splay_stack_.push_back(y);
    }
    for (auto it = splay_stack_.rbegin(); it != splay_stack_.rend(); ++it) push_down(*it);
    while (!is_splay_root(x)) {
      const int32_t p = tree_parent_[x];
      if (!is_splay_root(p)) {
        const int32_t g = tree_parent_[p];
        const bool zig_zig = (child_left_[g] == p) == (child_left_[p] == x);
        rotate(zig_zig ? p : x);
      }
      rotate(x);
    }
  }
  void access(int32_t x) {
    int32_t below = -1;
    for (int32_t y = x; y >= 0; y = tree_parent_[y]) {
      splay(y);
      child_right_[y] = below;
      below = y;
    }
    splay(x);
  }
  void tree_cut(int32_t x) {
    access(x);
    const int32_t above = child_left_[x];
    if (above >= 0) {
      tree_parent_[above] = -1;
      child_left_[x] = -1;
    }
  }
  // x must be the root of its represented tree and of its splay tree.
  void tree_link(int32_t x, int32_t parent) { tree_parent_[x] = parent; }

  std::vector<int32_t> len_, link_, first_edge_;
  std::vector<int32_t> edge_state_, edge_symbol_, edge_target_, edge_next_, slots_;
  std::vector<int32_t> child_left_, child_right_, tree_parent_, node_value_, node_tag_;
  std::vector<int32_t> splay_stack_;
  std::vector<int32_t> queries_, keys_, values_;
  int32_t last_ = 0, matched_ = 0, matched_len_ = 0;
  bool link_cut_ = false;
  int64_t allowance_ = heron_rosa::kDefaultChainBudgetPerToken * heron_rosa::kChainSlackTokens;
};

class OnlineBank {
 public:
  explicit OnlineBank(int64_t num_streams) {
    TORCH_CHECK(num_streams >= 0, "num_streams must be >= 0");
    streams_.resize(static_cast<size_t>(num_streams));
  }

  int64_t num_streams() const { return static_cast<int64_t>(streams_.size()); }
  int64_t length() const { return streams_.empty() ? length_ : streams_[0].length(); }

  // q, k, v: contiguous int64 [S, T] (validated by the caller); returns [S, T].
  torch::Tensor extend(torch::Tensor q, torch::Tensor k, torch::Tensor v) {
    for (const auto* tensor : {&q, &k, &v}) {
      TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == torch::kInt64 &&
                      tensor->dim() == 2 && tensor->is_contiguous(),
                  "OnlineBank.extend expects contiguous int64 CPU tensors [S, T]");
      TORCH_CHECK(tensor->size(0) == num_streams(), "stream count mismatch");
      TORCH_CHECK(tensor->size(1) == q.size(1), "q, k and v must have one length");
    }
    const int64_t steps = q.size(1);
    auto out = torch::empty_like(q);
    const int64_t* q_ptr = q.data_ptr<int64_t>();
    const int64_t* k_ptr = k.data_ptr<int64_t>();
    const int64_t* v_ptr = v.data_ptr<int64_t>();
    int64_t* out_ptr = out.data_ptr<int64_t>();
    {
      pybind11::gil_scoped_release no_gil;
      // An RNN step pushes one symbol per stream (~0.1 us each): hand a thread enough streams to
      // outweigh the fork/join, or a 768-stream step on a busy 64-core host waits on 64 threads.
      const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, steps));
      at::parallel_for(0, num_streams(), grain, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          OnlineStream& stream = streams_[static_cast<size_t>(s)];
          for (int64_t t = 0; t < steps; ++t) {
            const int64_t at = s * steps + t;
            out_ptr[at] = stream.push(q_ptr[at], k_ptr[at], v_ptr[at]);
          }
        }
      });
    }
    length_ += steps;
    return out;
  }

  OnlineBank copy() const { return *this; }

  OnlineBank select(torch::Tensor index) const {
    TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == torch::kInt64 &&
                    index.dim() == 1 && index.is_contiguous(),
                "stream_index must be a contiguous int64 CPU tensor [N]");
    OnlineBank chosen(0);
    chosen.length_ = length();
    const int64_t* idx = index.data_ptr<int64_t>();
    chosen.streams_.reserve(static_cast<size_t>(index.size(0)));
    for (int64_t i = 0; i < index.size(0); ++i) {
      TORCH_CHECK(idx[i] >= 0 && idx[i] < num_streams(), "stream index out of range");
      chosen.streams_.push_back(streams_[static_cast<size_t>(idx[i])]);
    }
    return chosen;
  }

  // The pushed histories [S, T] of q, k and v (the serialized form: replaying them rebuilds the
  // automata exactly).
  std::vector<torch::Tensor> history() const {
    const int64_t steps = length();
    std::vector<torch::Tensor> result;
    for (int which = 0; which < 3; ++which) {
      auto tensor = torch::empty({num_streams(), steps}, torch::kInt64);
      int64_t* ptr = tensor.data_ptr<int64_t>();
      for (int64_t s = 0; s < num_streams(); ++s) {
        const OnlineStream& stream = streams_[static_cast<size_t>(s)];
        const std::vector<int32_t>& source =
            which == 0 ? stream.queries() : (which == 1 ? stream.keys() : stream.values());
        for (int64_t t = 0; t < steps; ++t) ptr[s * steps + t] = source[static_cast<size_t>(t)];
      }
      result.push_back(tensor);
    }
    return result;
  }

 private:
  std::vector<OnlineStream> streams_;
  int64_t length_ = 0;  // kept for banks with zero streams
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rosa_forward, "Exact QKV ROSA on [B, T, S] int64 CPU tensors",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("sigma"),
        pybind11::arg("chain_budget_per_token") = heron_rosa::kDefaultChainBudgetPerToken,
        pybind11::arg("token_bits") = true);
  m.attr("dense_max_sigma") = heron_rosa::kDenseMaxSigma;
  pybind11::class_<OnlineBank>(m, "OnlineBank")
      .def(pybind11::init<int64_t>())
      .def_property_readonly("num_streams", &OnlineBank::num_streams)
      .def_property_readonly("length", &OnlineBank::length)
      .def("extend", &OnlineBank::extend)
      .def("copy", &OnlineBank::copy)
      .def("select", &OnlineBank::select)
      .def("history", &OnlineBank::history);
}
