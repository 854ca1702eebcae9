"""A tiny model honouring the Heron model interface, for testing the generation loop on its own.

``x_t = emb[token_t] + mix * emb[token_{t-1}] + rosa_emb[y_t]`` (``y`` = token ROSA, zero on no
match), ``logits = head(tanh(x))``. The whole-sequence path computes ROSA with the brute-force
oracle; the stateful path continues one online suffix automaton per row, so the two agree only
if the generation loop feeds every row exactly its own tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from heron.ops.rosa.reference import SuffixAutomatonROSA, rosa_oracle


@dataclass
class ToyState:
    automata: list
    history: list          # tokens seen per row (the oracle path recomputes from them)
    previous: torch.Tensor  # [B] last token per row

    def copy(self) -> "ToyState":
        return ToyState(copy.deepcopy(self.automata), [list(h) for h in self.history], self.previous.clone())

    def select(self, index) -> "ToyState":
        rows = torch.as_tensor(index, dtype=torch.int64).tolist()
        return ToyState([copy.deepcopy(self.automata[r]) for r in rows], [list(self.history[r]) for r in rows],
                        self.previous[torch.as_tensor(rows, dtype=torch.int64, device=self.previous.device)])

    def to(self, device) -> "ToyState":
        return ToyState(self.automata, self.history, self.previous.to(device))


class ToyROSAModel(nn.Module):
    def __init__(self, vocab_size: int = 12, n_embd: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.emb = nn.Parameter(torch.randn(vocab_size, n_embd, generator=generator, dtype=torch.float64))
        self.rosa_emb = nn.Parameter(torch.randn(vocab_size, n_embd, generator=generator, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(vocab_size, n_embd, generator=generator, dtype=torch.float64))
        self.mix = 0.5
        self.calls = []  # (kind, shape) of every call, to check how the loop drives the model

    def _rosa_rows(self, tokens: torch.Tensor, state: ToyState | None):
        outputs, automata, histories = [], [], []
        for row in range(tokens.shape[0]):
            if state is None:
                automaton, history = SuffixAutomatonROSA(), []
            else:
                automaton, history = copy.deepcopy(state.automata[row]), list(state.history[row])
            new_tokens = tokens[row].tolist()
            if state is None:
                row_outputs = rosa_oracle(new_tokens)
                for token in new_tokens:
                    automaton.push(token, token, token)
            else:
                row_outputs = [automaton.push(token, token, token) for token in new_tokens]
            outputs.append(row_outputs)
            automata.append(automaton)
            histories.append(history + new_tokens)
        return torch.tensor(outputs, dtype=torch.int64, device=tokens.device), automata, histories

    def _run(self, tokens, state: ToyState | None):
        rosa, automata, histories = self._rosa_rows(tokens, state)
        previous = torch.zeros(tokens.shape[0], dtype=torch.int64) if state is None else state.previous
        shifted = torch.cat([previous[:, None], tokens[:, :-1]], dim=1)
        x = self.emb[tokens] + self.mix * self.emb[shifted]
        x = x + torch.where(rosa[..., None] >= 0, self.rosa_emb[rosa.clamp(min=0)], torch.zeros_like(x))
        logits = torch.tanh(x) @ self.head.T * 3.0
        return logits, ToyState(automata, histories, tokens[:, -1].clone())

    def forward(self, tokens, state: ToyState | None = None, return_state: bool = False):
        self.calls.append(("forward", tuple(tokens.shape)))
        logits, new_state = self._run(tokens, state)
        return (logits, new_state) if return_state else logits

    def step(self, token_ids, state=None):
        self.calls.append(("step", tuple(token_ids.shape)))
        logits, new_state = self._run(token_ids[:, None], state)
        return logits[:, 0], new_state
