"""A tiny copy task for the trainer's tests: it needs none of the other parts of the package.

Each row is ``k`` random symbols, a separator, then the same ``k`` symbols again; only the
copied half is scored. A one-layer GRU learns it in a few hundred steps, and a handful of
steps is enough to check trajectories, checkpoints and distributed equivalence.
"""

from __future__ import annotations

import torch
from torch import nn

from heron.train.tasks import NEXT_TOKEN_METRICS, Curriculum, Task, TaskSetup, _next_token_metrics, register_task

NAME = "synthetic-copy"


class CopySource:
    def __init__(self, half: int = 7, symbols: int = 6, bad_token: int | None = None) -> None:
        self.half = half
        self.symbols = symbols
        self.vocab_size = symbols + 1  # the last id separates the halves
        self.seq_len = 2 * half + 1
        self.bad_token = bad_token

    def batch(self, batch_size: int, generator: torch.Generator):
        first = torch.randint(0, self.symbols, (batch_size, self.half), generator=generator)
        separator = torch.full((batch_size, 1), self.symbols)
        tokens = torch.cat([first, separator, first, separator], dim=1)
        inputs, targets = tokens[:, :-1].clone(), tokens[:, 1:].clone()
        targets[:, : self.half] = -100
        if self.bad_token is not None:
            inputs[0, 0] = self.bad_token
        return inputs, targets


class TinyGRU(nn.Module):
    def __init__(self, vocab_size: int, width: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.emb(tokens))
        return self.head(hidden)


def build(config) -> TaskSetup:
    options = {"half": 7, "width": 16, "bad_token": None, **config.task_options}
    source = CopySource(options["half"], bad_token=options["bad_token"])
    width = int(config.model_config.get("width", options["width"]))
    model = TinyGRU(source.vocab_size, width)
    clean = CopySource(options["half"])

    def evaluate(model, device, autocast):
        generator = torch.Generator().manual_seed(7)
        batches = [clean.batch(32, generator) for _ in range(2)]
        return _next_token_metrics(model, batches, device, autocast)

    def export(model, out):
        path = out / "model.pt"
        torch.save(model.state_dict(), path)
        return path

    return TaskSetup(Curriculum([(0, source)]), source.vocab_size, model, {"class": "TinyGRU", "width": width},
                     evaluate, export, metrics=NEXT_TOKEN_METRICS)


TASK = register_task(Task(NAME, "tiny copy task for tests", dict(steps=8, batch_size=8, lr=1e-2, lr_final=1e-3,
                                                                progress=False, tensorboard=False, log_every=1),
                          build))


def config(tmp_path, **overrides):
    from heron.train.config import TrainConfig

    values = {**TASK.defaults, "task": NAME, "out": str(tmp_path), "device": "cpu", **overrides}
    return TrainConfig.from_dict(values)
