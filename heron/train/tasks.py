"""The task registry: task name -> batch source, default model and settings, metric.

A :class:`Task` turns a :class:`~heron.train.config.TrainConfig` into a :class:`TaskSetup`
(training data per step, the model, how to evaluate it and how to export it). Each task imports
its data module lazily, so a missing or broken module only breaks its own task; the trainer
only ever sees the data contract of docs/design.md (``batch(batch_size, generator)``).

Tasks: ``counting`` (the official ROSA toy), ``reverse`` and ``arith`` (spec RWKV8.md §7),
``text`` (language modelling over files or the demo corpus) and ``abc`` (folk tunes).
Tests and extensions add their own with :func:`register_task`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from heron.train.config import TrainConfig


class BatchSource(Protocol):
    vocab_size: int
    seq_len: int

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


class Curriculum:
    """The batch source in force at each step: ``stages`` = ``[(first_step, source), ...]``
    sorted by ``first_step``, the first at step 0. A function of the step alone, so a resumed
    run picks the same source as an uninterrupted one."""

    def __init__(self, stages: list[tuple[int, BatchSource]]) -> None:
        if not stages or stages[0][0] != 0:
            raise ValueError("a curriculum needs a first stage at step 0")
        starts = [start for start, _ in stages]
        if starts != sorted(set(starts)):
            raise ValueError(f"curriculum stages must start at increasing steps, got {starts}")
        self.stages = stages

    def at(self, step: int) -> BatchSource:
        current = self.stages[0][1]
        for start, source in self.stages:
            if step < start:
                break
            current = source
        return current


Evaluator = Callable[[nn.Module, torch.device, Callable[[], contextlib.AbstractContextManager]], dict[str, float]]


@dataclass
class TaskSetup:
    sources: Curriculum
    vocab_size: int
    model: nn.Module
    # What a checkpoint's model must match to be loaded into this run (reported field by field).
    model_identity: dict[str, Any]
    evaluate: Evaluator
    # Writes the trained model as a file `heron.models.load` reads; None when the task has none.
    export: Callable[[nn.Module, Path], Path] | None = None
    # The names `evaluate` reports, so `--keep-best` is checked before the first step
    metrics: tuple[str, ...] = ()
    # What a resumed run's data must match (data read from files; generated data follows from
    # the configuration, which the checkpoint already pins)
    data_identity: dict[str, str] | None = None


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    defaults: dict[str, Any]  # TrainConfig fields this task sets differently from the dataclass
    build: Callable[[TrainConfig], TaskSetup]


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return _REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# pieces shared by the tasks


def _options(config: TrainConfig, allowed: dict[str, Any]) -> dict[str, Any]:
    """``config.task_options`` over ``allowed`` (name -> default), rejecting unknown names."""
    unknown = set(config.task_options) - set(allowed)
    if unknown:
        raise ValueError(
            f"task {config.task!r} has no option(s) {sorted(unknown)}; its options: {sorted(allowed)}"
        )
    return {**allowed, **config.task_options}


def _import(module: str, task: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"task {task!r} needs {module}, which cannot be imported: {exc}") from exc


def _model_config(config_class, values: dict[str, Any]):
    """``config_class(**values)``, naming unknown fields (they come from ``--model-config``)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"--model-config: unknown field(s) {sorted(unknown)}; "
                         f"{config_class.__name__} has {sorted(known)}")
    return config_class(**values)


def _rwkv8(model_config: dict[str, Any], config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """An RWKV-8 model for a task without model variants (``--model`` is refused)."""
    if config.model is not None:
        raise ValueError(f"task {config.task!r} has no model variants (got --model {config.model!r}); "
                         f"change its RWKV-8 model with --model-config")
    return _build_rwkv8(model_config, config)


def _build_rwkv8(model_config: dict[str, Any], config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """An RWKV-8 model from the task's defaults overridden by ``--model-config``; the LM recipe
    re-initialises it (spec §5)."""
    rwkv8 = _import("heron.models.rwkv8", config.task)
    model_cfg = _model_config(rwkv8.RWKV8Config, {**model_config, **config.model_config})
    model = rwkv8.RWKV8(model_cfg)
    if config.recipe == "lm":
        init = _import("heron.models.init", config.task)
        init.init_lm_recipe(model)
    return model, {"class": "RWKV8", **model_cfg.to_dict()}


# The language-model tasks (text, abc) train RWKV-8 by default; ``--model rosa_lm`` trains the
# pure ROSA LM of spec RWKV8.md §4 (ROSA-QKV + channel-mix, no time-mix) of the same width/depth.
LM_VARIANTS = ("rwkv8", "rosa_lm")
# The RWKV-8 defaults that also describe a ROSA LM (depth, width, vocabulary, estimator).
_ROSA_LM_SHARED = ("n_layer", "n_embd", "vocab_size", "dim_ffn", "rosa_estimator", "rosa_tau")


def _rosa_lm(model_config: dict[str, Any], config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    rosa_lm = _import("heron.models.rosa_lm", config.task)
    values = {key: value for key, value in model_config.items() if key in _ROSA_LM_SHARED}
    model_cfg = _model_config(rosa_lm.ROSALMConfig, {**values, **config.model_config})
    return rosa_lm.ROSALM(model_cfg), {"class": "ROSALM", **model_cfg.to_dict()}


def _language_model(model_config: dict[str, Any], config: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """``--model rwkv8`` (default) or ``--model rosa_lm`` for the language-model tasks."""
    variant = config.model or "rwkv8"
    if variant not in LM_VARIANTS:
        raise ValueError(f"task {config.task!r}: --model must be one of {', '.join(LM_VARIANTS)}, got {variant!r}")
    if variant == "rosa_lm":
        return _rosa_lm(model_config, config)
    return _build_rwkv8(model_config, config)


def _save_with_heron(model: nn.Module, out: Path) -> Path:
    from heron.models.loading import save

    return save(model, out / "model.safetensors")


def _check_count(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"task option {name}: expected an int >= {low}, got {value!r}")


NEXT_TOKEN_METRICS = ("eval_loss", "eval_bits_per_token", "next_token_accuracy")


def _next_token_metrics(model, batches, device, autocast) -> dict[str, float]:
    """Mean loss (nats and bits per scored token) and next-token accuracy over ``batches``."""
    total_loss, correct, scored = 0.0, 0, 0
    for inputs, targets in batches:
        with autocast():
            logits = model(inputs.to(device)).float()
        targets = targets.to(device)
        total_loss += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=-100, reduction="sum"))
        mask = targets != -100
        correct += int(((logits.argmax(-1) == targets) & mask).sum())
        scored += int(mask.sum())
    if scored == 0:
        raise ValueError("evaluation scored no tokens")
    loss = total_loss / scored
    return dict(zip(NEXT_TOKEN_METRICS, (loss, loss / math.log(2), correct / scored)))


# Evaluation draws use their own seeds, far from any training seed a user picks by hand.
EVAL_SEED = 1_000_003


# ---------------------------------------------------------------------------------------------
# counting (the official ROSA toy, spec RWKV8.md §7)


def _build_counting_task(config: TrainConfig) -> TaskSetup:
    counting = _import("heron.data.counting", config.task)
    toys = _import("heron.models.toys", config.task)
    options = _options(config, {"seq_len": 127, "max_digits": 3})
    source = counting.CountingSource(seq_len=options["seq_len"], max_digits=options["max_digits"])
    variant = config.model or "1bit"
    known = {f.name for f in dataclasses.fields(toys.CountingToyConfig)} - {"variant"}
    unknown = set(config.model_config) - known
    if unknown:
        raise ValueError(f"--model-config: unknown field(s) {sorted(unknown)}; the counting toys have {sorted(known)}")
    model_cfg = toys.CountingToyConfig(variant=variant, vocab_size=source.vocab_size,
                                       **{"n_embd": 64, **config.model_config})
    model = toys.CountingToy(model_cfg)
    samples = config.eval_samples or 512

    def evaluate(model, device, autocast) -> dict[str, float]:
        metrics = toys.evaluate_counting(model, num_samples=samples, seed=EVAL_SEED, seq_len=options["seq_len"])
        return {"eval_loss": metrics["loss"], "next_token_accuracy": metrics["accuracy"]}

    return TaskSetup(Curriculum([(0, source)]), source.vocab_size, model, {"class": "CountingToy", **model_cfg.to_dict()},
                     evaluate, _save_with_heron, metrics=("eval_loss", "next_token_accuracy"))


# The official toy settings: C = 64, B = 128, T = 128, AdamW defaults (wd 0.01), 1e-3 -> 1e-6
# cosine, no warm-up, no clipping, 1000 steps.
register_task(Task("counting", "the official ROSA counting toy (--model emb|1bit|1bit_run|4bit)",
                   dict(steps=1000, batch_size=128, lr=1e-3, lr_final=1e-6, warmup=0, weight_decay=0.01,
                        recipe="official", clip=0.0, out="runs/counting"),
                   _build_counting_task))


# ---------------------------------------------------------------------------------------------
# reverse and arith (spec RWKV8.md §7)

# The official task-model shape (checkpoints 251105/260123: 39,564 parameters for reversal),
# trained with the cheap "window" ROSA estimator (the bit-flip estimator truncated to a window,
# docs/estimators.md) rather than the exact O(T^2) "flip", and its denominator floor tau raised
# from 1e-3 to 0.1: on 10-digit reversal (docs/benchmarks/training.md) tau = 1e-3 gave gradient
# norms of 5-100 and 93% after 400 steps, tau = 0.1 gave 99%.
DIGIT_MODEL = {
    "reverse": dict(n_layer=2, n_embd=32, head_size=16, dim_ffn=128, lora_rank_decay=8, lora_rank_iclr=8,
                    lora_rank_value=8, lora_rank_gate=8, rosa="qkv1", rosa_estimator="window", rosa_tau=0.1,
                    deep_embed=False, ln0=False, head_bias=True, layer0_value_lora=True),
    # 251024_rosaQKV_L2_digit20: C = 128, LoRA ranks 16 (568,077 parameters).
    "arith": dict(n_layer=2, n_embd=128, head_size=16, dim_ffn=512, lora_rank_decay=16, lora_rank_iclr=16,
                  lora_rank_value=16, lora_rank_gate=16, rosa="qkv1", rosa_estimator="window", rosa_tau=0.1,
                  deep_embed=False, ln0=False, head_bias=True, layer0_value_lora=True),
}
DIGIT_DEFAULT_MAX = {"reverse": 60, "arith": 20}


def _digit_curriculum(value, max_digits: int) -> list[tuple[int, int]]:
    """``curriculum`` option: ``[[first_step, max_digits], ...]``; empty = ``max_digits`` throughout."""
    if not value:
        return [(0, max_digits)]
    try:
        stages = [(int(start), int(digits)) for start, digits in value]
    except (TypeError, ValueError):
        raise ValueError(f"task option curriculum must be a list of [first_step, max_digits] pairs, got {value!r}") from None
    if stages[0][0] != 0:
        raise ValueError(f"task option curriculum must start at step 0, got {value!r}")
    for _, digits in stages:
        if not 1 <= digits <= max_digits:
            raise ValueError(f"task option curriculum: digit counts must be in 1..max_digits={max_digits}, got {digits}")
    return stages


def _build_digit_task(config: TrainConfig) -> TaskSetup:
    name = config.task
    digits = _import("heron.data.digits", name)
    options = _options(config, {"max_digits": DIGIT_DEFAULT_MAX[name], "curriculum": [], "seq_len": None,
                                "eval_samples": None})
    max_digits = options["max_digits"]
    seq_len = options["seq_len"] or digits.default_length(name, max_digits) - 1
    source_class = digits.ReverseDigits if name == "reverse" else digits.ArithDigits
    stages = _digit_curriculum(options["curriculum"], max_digits)
    sources = Curriculum([(start, source_class(stage_digits, seq_len=seq_len)) for start, stage_digits in stages])
    vocab_size = source_class.vocab_size
    model, identity = _rwkv8({**DIGIT_MODEL[name], "vocab_size": vocab_size}, config)
    samples = config.eval_samples or options["eval_samples"]

    def evaluate(model, device, autocast) -> dict[str, float]:
        # The official protocol on the official draw (seed 42; 10 per digit count for reversal,
        # one round of operand shapes for arithmetic) unless eval_samples asks for more.
        tokens, counts = digits.official_samples(name, max_digits, samples, seed=42, length=seq_len + 1)
        predictions = torch.empty(tokens.shape[0], seq_len, dtype=torch.long)
        for first in range(0, tokens.shape[0], 256):
            with autocast():
                logits = model(tokens[first:first + 256, :-1].to(device))
            predictions[first:first + logits.shape[0]] = logits.argmax(-1).cpu()
        score = digits.score_predictions(tokens, predictions, name, counts)
        worst = min(correct / scored for correct, scored in score.per_digit.values() if scored)
        return {"digit_accuracy": score.accuracy, "worst_digit_count_accuracy": worst}

    return TaskSetup(sources, vocab_size, model, identity, evaluate, _save_with_heron,
                     metrics=("digit_accuracy", "worst_digit_count_accuracy"))


# Defaults for the digit tasks: the official small-task optimiser (plain AdamW, cosine) with
# clipping and a short warm-up; examples/reverse/config.toml is the tuned reversal recipe.
_DIGIT_DEFAULTS = dict(steps=3000, batch_size=128, lr=1e-3, lr_final=1e-5, warmup=100, weight_decay=0.01,
                       recipe="official", clip=1.0, eval_every=500)

register_task(Task("reverse", "reverse 1..D-digit numbers (spec §7), honest digit accuracy",
                   {**_DIGIT_DEFAULTS, "lr": 3e-3, "out": "runs/reverse"}, _build_digit_task))
register_task(Task("arith", "add/subtract 1..D-digit numbers (spec §7), honest digit accuracy",
                   {**_DIGIT_DEFAULTS, "out": "runs/arith"}, _build_digit_task))


# ---------------------------------------------------------------------------------------------
# text (language modelling)

# Long contexts: the exact flip estimator is O(T^2) per stream, the window estimator O(T * window).
TEXT_MODEL = dict(n_layer=4, n_embd=256, head_size=64, rosa="qkv1", rosa_estimator="window", deep_embed=True)


# The repeat augmentation of the training rows (heron.data.text.RepeatAugmentation; docs/training.md):
# off by default, the other values apply once repeat_prob > 0.
TEXT_REPEAT_OPTIONS = {"repeat_prob": 0.0, "repeat_min": 16, "repeat_max": 128, "repeat_random": 0.5,
                       "repeat_gap": 32, "repeat_count": 1, "repeat_pool": 0, "repeat_uniform": 0.0}


def _build_text_task(config: TrainConfig) -> TaskSetup:
    text = _import("heron.data.text", config.task)
    options = _options(config, {"data": [], "tokenizer": "world", "seq_len": 512, "validation_fraction": 0.05,
                                "eval_batches": 8, "copy_trials": 0, "copy_seed": 1, "copy_pool": 1000,
                                **TEXT_REPEAT_OPTIONS})
    copy_trials, copy_seed, copy_pool_size = options["copy_trials"], options["copy_seed"], options["copy_pool"]
    for name, value, low in (("copy_trials", copy_trials, 0), ("copy_seed", copy_seed, 0),
                             ("copy_pool", copy_pool_size, 1), ("eval_batches", options["eval_batches"], 1)):
        _check_count(name, value, low)  # now, not after the training
    # The repeat augmentation (off unless repeat_prob > 0) is built first, so a bad value is
    # reported before any data is read; it applies to the training rows only.
    repeats = text.RepeatAugmentation(**{name: options[name] for name in TEXT_REPEAT_OPTIONS})
    data = options["data"]
    listed = [data] if isinstance(data, str) else data
    if not isinstance(listed, (list, tuple)) or not all(isinstance(path, str) for path in listed):
        raise ValueError(f"task option data: expected a file path or a list of paths, got {data!r}")
    paths = list(listed)
    folders = [path for path in paths if Path(path).is_dir()]
    if folders:
        raise ValueError(f"task 'text': data must be files (.txt, .jsonl, binidx), not folders: {', '.join(folders)}")
    missing = [str(path) for path in paths if not Path(path).exists() and not text.binidx_exists(path)]
    if missing:
        raise FileNotFoundError(f"task 'text': data file(s) not found: {', '.join(missing)}")
    resolved = [Path(path).resolve() for path in paths]
    repeated = sorted({str(path) for path, full in zip(paths, resolved) if resolved.count(full) > 1})
    if repeated:
        # the held-out tail would then also be training data: a meaningless validation loss
        raise ValueError(f"task 'text': data file(s) given more than once: {', '.join(repeated)}")
    if paths:
        train_source, validation = text.TextSource.from_files(
            paths, options["seq_len"], tokenizer=options["tokenizer"]).holdout(options["validation_fraction"])
    else:  # the offline demo corpus with its documented split
        train_source = text.TextSource.demo("train", options["seq_len"], tokenizer=options["tokenizer"])
        validation = text.TextSource.demo("validation", options["seq_len"], tokenizer=options["tokenizer"])
    train_source = train_source.with_repeats(repeats)
    model, identity = _language_model({**TEXT_MODEL, "vocab_size": train_source.vocab_size}, config)
    eval_batches = config.eval_samples or options["eval_batches"]
    eval_rows = max(1, min(config.batch_size, 64))

    # The copy protocol of `heron generate --copy-eval` (issue 7) at every evaluation, on the
    # copy_pool (1000) most frequent validation tokens, with its own seed (default 1: not the
    # final evaluation's 0)
    copy_pool = None
    if copy_trials:
        try:
            copy_pool = text.most_frequent_tokens(validation.tokens, copy_pool_size)
        except ValueError as exc:
            raise ValueError(f"copy_pool: {exc}; lower copy_pool for this corpus") from None

    def evaluate(model, device, autocast) -> dict[str, float]:
        metrics = _next_token_metrics(model, validation.sequential_batches(eval_rows, eval_batches), device, autocast)
        if copy_trials:
            metrics.update(_copy_metrics(model, copy_pool, copy_trials, copy_seed))
        return metrics

    return TaskSetup(Curriculum([(0, train_source)]), train_source.vocab_size, model, identity, evaluate,
                     _save_with_heron,
                     metrics=NEXT_TOKEN_METRICS + (("copy_token_accuracy", "copy_exact_share") if copy_trials else ()),
                     data_identity={"train": text.fingerprint(train_source.tokens),
                                    "validation": text.fingerprint(validation.tokens)})


def _copy_metrics(model, pool, trials: int, seed: int) -> dict[str, float]:
    from heron.generate.copy_eval import copy_eval

    # Generation steps the blocks one token at a time with a state: with compiled blocks that
    # would recompile per shape, so the evaluation runs them eagerly (same weights, same numbers),
    # in the weights' dtype as `heron generate --copy-eval` does (no autocast).
    stance = getattr(torch.compiler, "set_stance", None)
    with stance("force_eager") if stance is not None else contextlib.nullcontext():
        result = copy_eval(model, pool, trials=trials, seed=seed, batch_size=min(trials, 50))
    return {"copy_token_accuracy": result.token_accuracy, "copy_exact_share": result.exact_share}


register_task(Task("text", "language modelling on --data files (.txt/.jsonl/binidx) or the demo corpus",
                   dict(steps=2000, batch_size=32, lr=6e-4, lr_final=6e-5, warmup=100, weight_decay=0.1,
                        recipe="lm", clip=1.0, eval_every=250, out="runs/text"),
                   _build_text_task))


# ---------------------------------------------------------------------------------------------
# abc (folk tunes from the music21 corpus)

ABC_MODEL = dict(n_layer=4, n_embd=256, head_size=64, rosa="qkv1", rosa_estimator="window", deep_embed=True)


def _build_abc_task(config: TrainConfig) -> TaskSetup:
    music = _import("heron.data.music", config.task)
    options = _options(config, {"seq_len": 512, "min_count": 2, "eval_batches": 0, "eval_max_len": 2048})
    train_source, validation = music.make_batch_sources(options["seq_len"], min_count=options["min_count"])
    model, identity = _language_model({**ABC_MODEL, "vocab_size": train_source.vocab_size}, config)
    _check_count("eval_batches", options["eval_batches"], low=0)  # checked now, not after the training
    _check_count("eval_max_len", options["eval_max_len"], low=1)
    eval_batches = config.eval_samples or options["eval_batches"]  # 0: every validation tune

    def evaluate(model, device, autocast) -> dict[str, float]:
        batches = validation.evaluation_batches(16, max_len=options["eval_max_len"])
        if eval_batches:
            batches = (batch for index, batch in zip(range(eval_batches), batches))
        return _next_token_metrics(model, batches, device, autocast)

    def export(model, out: Path) -> Path:
        # heron music generate finds the tokenizer beside the model file
        train_source.tokenizer.save(out / "tokenizer.json")
        return _save_with_heron(model, out)

    return TaskSetup(Curriculum([(0, train_source)]), train_source.vocab_size, model, identity, evaluate, export,
                     metrics=NEXT_TOKEN_METRICS)


register_task(Task("abc", "folk tunes in ABC notation (music21 corpus), validation bits per token",
                   dict(steps=2000, batch_size=32, lr=1e-3, lr_final=1e-5, warmup=100, weight_decay=0.1,
                        recipe="lm", clip=1.0, eval_every=500, out="runs/abc"),
                   _build_abc_task))
