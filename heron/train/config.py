"""The training configuration: one dataclass, loadable from a JSON or TOML file.

Precedence when a run starts: the task's defaults, then the ``--config`` file, then the options
given on the command line. On ``--resume`` the checkpoint's configuration replaces the task's
defaults, and any *trajectory* field (one that changes the numbers the run produces) that the
file or the command line would change is reported as an error naming each changed field.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECIPES = ("official", "lm")
DTYPES = ("auto", "fp32", "bf16", "fp64")
PARALLEL = ("ddp", "fsdp")

# Fields that may differ between a run and its resumption without changing the trajectory:
# where the run writes, how often it reports, how long this invocation may last, and the
# device (results then match only up to the devices' arithmetic), and how the step is executed
# (data parallelism, activation checkpointing, compilation, chunked cross-entropy: the same
# computation up to the order of floating-point operations).
OPERATIONAL_FIELDS = frozenset(
    {"out", "eval_every", "ckpt_every", "log_every", "time_limit", "device", "progress",
     "tensorboard", "eval_samples", "parallel", "grad_checkpointing", "compile", "rosa_overlap", "ce_chunk",
     "keep_best"}
)


@dataclass
class TrainConfig:
    task: str
    # Model: a named variant (tasks with several, e.g. counting's emb|1bit|4bit) and overrides
    # of the task's default model configuration (n_layer, n_embd, head_size, rosa, estimator...).
    model: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    # Task-specific data options (max_digits, curriculum, data paths, seq_len ...).
    task_options: dict[str, Any] = field(default_factory=dict)
    # Optimisation. batch_size is the GLOBAL batch per optimiser step (all ranks, all
    # accumulation micro-steps together), so results do not depend on the process count.
    steps: int = 1000
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    lr_final: float = 1e-6
    warmup: int = 0
    weight_decay: float = 0.01
    recipe: str = "official"
    clip: float = 0.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # Operational.
    device: str = "auto"
    out: str = "runs/default"
    eval_every: int = 0  # 0: evaluate only at the end
    eval_samples: int = 0  # 0: the task's default evaluation size
    ckpt_every: int = 0  # 0: checkpoint only at exit
    log_every: int = 10
    time_limit: float = 0.0  # minutes this invocation may train before checkpointing; 0 = none
    # An evaluation metric: every evaluation that improves it writes the task's model file to
    # OUT/best (lower is better for names with "loss", "bits", "error" or "perplexity"). "": off.
    keep_best: str = ""
    progress: bool = True
    tensorboard: bool = True
    # Execution (none changes the trajectory beyond the order of float operations).
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated) or "fsdp" (FSDP2 fully_shard per block)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass
    compile: bool = False  # torch.compile each block (the whole model when it has no .blocks)
    rosa_overlap: bool = False  # CUDA: each ROSA block on a second stream beside its time-mix
    ce_chunk: int = 0  # head + cross-entropy over this many positions at a time (0: all at once)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
                expected = "a non-negative integer" if allow_zero else "a positive integer"
                raise ValueError(f"{name} must be {expected}, got {value!r}")

        def non_negative_float(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            positive_int(name)
        for name in ("warmup", "eval_every", "eval_samples", "ckpt_every", "seed", "ce_chunk"):
            positive_int(name, allow_zero=True)
        for name in ("lr", "lr_final", "weight_decay", "clip", "time_limit"):
            non_negative_float(name)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        for name in ("grad_checkpointing", "compile", "rosa_overlap", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.keep_best, str):
            raise ValueError(f"keep_best must be an evaluation metric name (or empty), got {self.keep_best!r}")
        if not isinstance(self.model_config, dict):
            raise TypeError(f"model_config must be a dict, got {type(self.model_config).__name__}")
        if not isinstance(self.task_options, dict):
            raise TypeError(f"task_options must be a dict, got {type(self.task_options).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        unknown = set(values) - cls.field_names()
        if unknown:
            raise ValueError(
                f"unknown training option(s) {sorted(unknown)}; known: {sorted(cls.field_names())}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a ``.json`` or ``.toml`` file (a flat table of TrainConfig fields; the
    ``model_config`` and ``task_options`` tables nest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            values = tomllib.loads(text)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .toml or .json, got {suffix or 'no suffix'!r}")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a table of options, got {type(values).__name__}")
    unknown = set(values) - TrainConfig.field_names()
    if unknown:
        raise ValueError(
            f"config file {path}: unknown option(s) {sorted(unknown)}; known: {sorted(TrainConfig.field_names())}"
        )
    return values


def merge_options(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` on top of ``base``; the nested ``model_config`` and ``task_options`` merge
    key by key so a file can change one model field without restating the others."""
    merged = dict(base)
    for key, value in overrides.items():
        if key in ("model_config", "task_options") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def trajectory_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable list of the fields that would change the trajectory of a resumed run."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        if key in OPERATIONAL_FIELDS:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    changes.append(f"{key}.{sub}: {old.get(sub)!r} -> {new.get(sub)!r}")
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def parse_assignment(text: str, option: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON where it parses (numbers, true/false, null,
    lists) and as a plain string otherwise (``rosa=qkv1``)."""
    if "=" not in text:
        raise ValueError(f"{option} expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"{option} expects KEY=VALUE with a non-empty KEY, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
