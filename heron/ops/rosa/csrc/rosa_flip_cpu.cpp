// CPU bit-flip gradient estimator for ROSA (spec/ROSA.md §4), OpenMP over streams.
//
// Inputs are symbol streams [S, T] (int64) and a value table val[S, T, 2^bits + 1]: val[s][i][y+1]
// is the contribution of output symbol y (y = -1: no match) at position i to
// phi = sum_i g[i] . out_i. For every flip (position t, bit m) the kernel returns
// phi(flipped stream) - phi(original stream). Each stream's automaton is advanced once over the
// original symbols; before position t is appended, each flip of a bit at t is run on top of it
// for `window` positions with an undo log, then rolled back, so a flip costs only the suffix it
// changes (the naive definition re-runs the whole stream).
#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <vector>

#include "rosa_flip.h"

namespace {

using heron_rosa_flip::Automaton;
using heron_rosa_flip::Snapshot;
using heron_rosa_flip::UndoEntry;
using heron_rosa_flip::UndoLog;

struct Workspace {
  std::vector<int32_t> next, link, length, last_end;
  std::vector<UndoEntry> undo;
  std::vector<int32_t> q, k, v, retrieved;
  std::vector<int32_t> last_end_saved;  // last_end of the snapshot all flips at t start from
  std::vector<double> base_value;
  Automaton automaton;
  UndoLog log;

  Workspace(int64_t T, int32_t alphabet, int64_t window) {
    const int64_t states = heron_rosa_flip::automaton_states(T);
    next.assign(states * alphabet, -1);
    link.assign(states, -1);
    length.assign(states, 0);
    last_end.assign(states, -1);
    last_end_saved.assign(states, -1);
    undo.resize(heron_rosa_flip::undo_capacity(std::min<int64_t>(window, T) + 1, T));
    q.resize(T);
    k.resize(T);
    v.resize(T);
    retrieved.resize(T);
    base_value.resize(T);
    automaton.next = next.data();
    automaton.link = link.data();
    automaton.length = length.data();
    automaton.last_end = last_end.data();
    automaton.alphabet = alphabet;
    automaton.stride = 1;
    log.entries = undo.data();
    log.size = 0;
  }
};

// Base run: retrieval index of every position and the base value of every position.
template <typename scalar_t>
void base_run(Workspace& w, int64_t T, const scalar_t* val, int64_t table) {
  heron_rosa_flip::reset(w.automaton);
  for (int64_t i = 0; i < T; ++i) {
    const int32_t r = heron_rosa_flip::step(w.automaton, w.q[i], w.k[i]);
    w.retrieved[i] = r;
    const int32_t y = r < 0 ? -1 : w.v[r];
    w.base_value[i] = static_cast<double>(val[i * table + y + 1]);
  }
}

// Which input of the QKV op a flip changes. Token ROSA flips all three at once.
enum FlipTarget { kToken = 0, kQuery = 1, kKey = 2 };

template <typename scalar_t>
double run_flip(Workspace& w, int64_t T, int64_t window, const scalar_t* val, int64_t table,
                int64_t t, int32_t flipped, FlipTarget target) {
  Automaton& a = w.automaton;
  w.log.size = 0;
  const Snapshot snapshot = heron_rosa_flip::mark(a, &w.log);
  a.log_last_end = false;
  const int64_t end = std::min<int64_t>(T, t + window);
  double delta = 0.0;
  for (int64_t i = t; i < end; ++i) {
    int32_t qi = w.q[i], ki = w.k[i];
    if (i == t) {
      if (target != kKey) qi = flipped;
      if (target != kQuery) ki = flipped;
    }
    const int32_t r = heron_rosa_flip::step(a, qi, ki);
    int32_t y = -1;
    if (r >= 0) y = (target == kToken && r == t) ? flipped : w.v[r];
    delta += static_cast<double>(val[i * table + y + 1]) - w.base_value[i];
  }
  heron_rosa_flip::rollback(a, snapshot);
  std::copy(w.last_end_saved.begin(), w.last_end_saved.begin() + snapshot.num_states,
            a.last_end);
  return delta;
}

template <typename scalar_t>
void flip_stream(Workspace& w, int64_t T, int64_t bits, int64_t window, const scalar_t* val,
                 bool token, scalar_t* dq, scalar_t* dk, scalar_t* dv) {
  const int64_t table = (int64_t(1) << bits) + 1;
  base_run(w, T, val, table);
  if (dv != nullptr) {
    // A value flip at t changes exactly the outputs that retrieve position t.
    for (int64_t i = 0; i < T; ++i) {
      const int32_t r = w.retrieved[i];
      if (r < 0) continue;
      for (int64_t m = 0; m < bits; ++m) {
        const int32_t y = w.v[r] ^ (1 << m);
        dv[r * bits + m] +=
            static_cast<scalar_t>(static_cast<double>(val[i * table + y + 1]) - w.base_value[i]);
      }
    }
  }
  if (dq == nullptr && dk == nullptr) return;
  heron_rosa_flip::reset(w.automaton);
  for (int64_t t = 0; t < T; ++t) {
    std::copy(w.automaton.last_end, w.automaton.last_end + w.automaton.num_states,
              w.last_end_saved.begin());
    for (int64_t m = 0; m < bits; ++m) {
      if (token) {
        dq[t * bits + m] = static_cast<scalar_t>(
            run_flip(w, T, window, val, table, t, w.q[t] ^ (1 << m), kToken));
        continue;
      }
      if (dq != nullptr)
        dq[t * bits + m] = static_cast<scalar_t>(
            run_flip(w, T, window, val, table, t, w.q[t] ^ (1 << m), kQuery));
      if (dk != nullptr)
        dk[t * bits + m] = static_cast<scalar_t>(
            run_flip(w, T, window, val, table, t, w.k[t] ^ (1 << m), kKey));
    }
    heron_rosa_flip::step(w.automaton, w.q[t], w.k[t]);
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
    Workspace w(T, alphabet, window);
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t i = 0; i < T; ++i) {
        w.q[i] = static_cast<int32_t>(q_ptr[s * T + i]);
        w.k[i] = static_cast<int32_t>(k_ptr[s * T + i]);
        w.v[i] = static_cast<int32_t>(v_ptr[s * T + i]);
      }
      const int64_t off = s * T * bits;
      flip_stream<scalar_t>(w, T, bits, window, val_ptr + s * T * (alphabet + 1), token,
                            dq_ptr ? dq_ptr + off : nullptr, dk_ptr ? dk_ptr + off : nullptr,
                            dv_ptr ? dv_ptr + off : nullptr);
    }
  }
}

void check_streams(const torch::Tensor& t, const char* name, int64_t S, int64_t T) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kInt64, name, " must be int64");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == S && t.size(1) == T, name, " must have shape [S, T]");
}

// Shared driver: token mode uses q only (q = k = v); QKV mode fills the requested gradients.
std::vector<torch::Tensor> flip_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                     torch::Tensor val, int64_t bits, int64_t window, bool token,
                                     bool want_q, bool want_k, bool want_v) {
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
    Workspace w(T, static_cast<int32_t>(alphabet), 1);
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
}
