"""The generation loop: prefill in GPT mode, then one RNN-mode ``step()`` per token.

Works with any model that has the Heron interface (``RWKV8``, ``ROSALM``, a task model):
``model(tokens [B, T], state=None, return_state=True) -> (logits [B, T, V], state)`` and
``model.step(token_ids [B], state) -> (logits [B, V], state)``; with ROSA the state carries one
online automaton per stream, so a step costs amortized constant time however long the context.

Ragged prompts need no padding: the common prefix length ``L = min(lengths)`` is prefilled for
the whole batch at once, and rows with longer prompts then keep feeding their own prompt tokens
through ``step()`` while shorter rows already generate. Each row therefore sees exactly its own
tokens, as if it had been generated alone. Finished rows are dropped from the batch
(``state.select``) when the state supports it.

Randomness: one uniform number per (row, generated token) is drawn up front from a CPU
generator, so a row's ``k``-th sampled token uses the same uniform whatever the batch schedule,
the device, or the mode (incremental vs. full recompute) — given equal logits they pick equal
tokens.

``incremental=False`` is the "recompute everything" baseline of the official pure-ROSA demo:
the whole context goes through the model for every new token. It exists for benchmarks and
for testing the incremental path against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from heron.generate.sampling import SamplingOptions, sample_next

__all__ = ["GenerationResult", "generate", "model_vocab_size", "model_device"]

_PREFILL_LOGIT_BUDGET = 1 << 28


@dataclass
class GenerationResult:
    """``tokens[i]``: the ids generated for prompt ``i`` (a stop token that ended it is not
    included); ``stop_reasons[i]``: ``"stop_token"`` or ``"length"``; ``stopped_by[i]``: the stop
    token or ``None``. ``logits[i]`` (only with ``record_logits=True``): ``[n_i, V]``, the logits
    each generated token was chosen from (float64 copies on CPU)."""

    tokens: list[list[int]]
    stop_reasons: list[str]
    stopped_by: list[int | None]
    prompt_lengths: list[int]
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    model_calls: int = 0
    logits: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def generated_count(self) -> int:
        return sum(len(row) for row in self.tokens)


def model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def model_vocab_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    return vocab if isinstance(vocab, int) else None


def _as_prompt_lists(prompts, vocab_size: int | None) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.is_floating_point() or prompts.dtype == torch.bool or prompts.is_complex():
            raise TypeError(f"prompts: expected integer token ids, got dtype {prompts.dtype}")
        if prompts.dim() == 1:
            prompts = [prompts.tolist()]
        elif prompts.dim() == 2:
            prompts = prompts.tolist()
        else:
            raise ValueError(f"prompts: expected a [T] or [B, T] tensor, got shape {tuple(prompts.shape)}")
    elif not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts: expected a list of token-id lists or a tensor, got {type(prompts).__name__}")
    elif prompts and all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
        prompts = [list(prompts)]  # a single prompt given as a flat list
    rows = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, torch.Tensor):
            if prompt.is_floating_point() or prompt.dim() != 1:
                raise TypeError(f"prompts[{index}]: expected a 1-D integer tensor, got {prompt.dtype} {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple)):
            raise TypeError(f"prompts[{index}]: expected a sequence of int token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError(f"prompts[{index}]: empty prompt (start it with the end-of-text id 0 for "
                             "an unconditional sample)")
        for position, token in enumerate(prompt):
            if isinstance(token, bool) or not isinstance(token, int):
                raise TypeError(f"prompts[{index}][{position}]: expected int, got {type(token).__name__}")
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                raise ValueError(f"prompts[{index}][{position}] = {token} is outside the vocabulary [0, {vocab_size})")
        rows.append(list(prompt))
    if not rows:
        raise ValueError("prompts: expected at least one prompt")
    return rows


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def _as_float(value):
    """``float(value)`` for numbers (anything with ``__float__``: numpy scalars, one-element tensors),
    else ``value`` unchanged, for :class:`SamplingOptions` to refuse by name (``float()`` would also
    parse the string ``"1"``, and a bool is not a temperature)."""
    return float(value) if hasattr(value, "__float__") and not isinstance(value, bool) else value


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    stop_tokens: Iterable[int] = (),
    on_token: Callable[[int, int], None] | None = None,
    incremental: bool = True,
    record_logits: bool = False,
    shrink_finished: bool = True,
    prefill_chunk: int | None = None,
) -> GenerationResult:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    ``prompts``: a list of token-id lists (ragged allowed), a single list, or a ``[B, T]`` /
    ``[T]`` tensor. ``seed`` or ``generator`` (a CPU ``torch.Generator``) fixes the sampling;
    neither is needed for greedy decoding (``temperature=0``). ``stop_tokens``: a row ends when
    it samples one of them (ids in ``[0, vocab_size)``). ``on_token(row, token_id)`` is called
    for every generated token as soon as it is chosen (stop tokens included), in generation
    order. ``prefill_chunk``: prompt tokens per GPT-mode call (the state carries over between
    chunks); by default as many as keep the logits of one call under 2**28 elements.
    """
    options = SamplingOptions(_as_float(temperature), _as_float(top_p), top_k)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "step"):
        raise TypeError("model: expected a Heron model (nn.Module with forward(tokens, state, return_state) and step())")
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens, 0)
    if prefill_chunk is not None:
        _check_count("prefill_chunk", prefill_chunk, 1)
    vocab_size = model_vocab_size(model)
    prompt_rows = _as_prompt_lists(prompts, vocab_size)
    if isinstance(stop_tokens, (str, bytes)) or not isinstance(stop_tokens, Iterable):
        raise TypeError(f"stop_tokens: expected an iterable of token ids (e.g. a list), got {stop_tokens!r}")
    stop_set = set()
    for token in stop_tokens:
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(f"stop_tokens: expected non-negative int token ids, got {token!r}")
        if vocab_size is not None and token >= vocab_size:
            # the model can never emit it, so the caller's stop condition would silently never fire
            raise ValueError(f"stop_tokens: {token} is outside the model's vocabulary [0, {vocab_size})")
        stop_set.add(token)
    if on_token is not None and not callable(on_token):
        raise TypeError("on_token: expected a callable(row, token_id)")
    if generator is not None and seed is not None:
        raise ValueError("seed, generator: pass one of them, not both")
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(_check_count("seed", seed, 0))
        else:
            generator.seed()
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("generator: expected a CPU torch.Generator")

    batch = len(prompt_rows)
    uniforms = None if options.greedy else torch.rand(batch, max(max_new_tokens, 1), generator=generator,
                                                      dtype=torch.float64)
    result = GenerationResult(tokens=[[] for _ in range(batch)], stop_reasons=["length"] * batch,
                              stopped_by=[None] * batch, prompt_lengths=[len(p) for p in prompt_rows],
                              logits=[[] for _ in range(batch)] if record_logits else None)
    if max_new_tokens == 0:
        if record_logits:
            result.logits = [torch.zeros(0, vocab_size or 0, dtype=torch.float64) for _ in range(batch)]
        return result

    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        runner = _generate_incremental if incremental else _generate_full_recompute
        runner(model, prompt_rows, max_new_tokens, options, uniforms, stop_set, on_token, result, device,
               shrink_finished, prefill_chunk)
    finally:
        model.train(was_training)
    if record_logits:
        result.logits = [torch.stack(rows) if rows else torch.zeros(0, vocab_size or 0, dtype=torch.float64)
                         for rows in result.logits]
    return result


def _choose(logits: torch.Tensor, rows: Sequence[int], options: SamplingOptions, uniforms, result) -> list[int]:
    """Pick the next token for each of ``rows`` from ``logits [len(rows), V]``."""
    row_uniforms = None
    if not options.greedy:
        row_uniforms = uniforms[torch.tensor(rows), torch.tensor([len(result.tokens[row]) for row in rows])]
    chosen = sample_next(logits, options, row_uniforms).tolist()
    if result.logits is not None:
        cpu_logits = logits.detach().to("cpu", torch.float64)
        for position, row in enumerate(rows):
            result.logits[row].append(cpu_logits[position])
    return chosen


def _accept(row: int, token: int, max_new_tokens: int, stop_set, on_token, result) -> bool:
    """Record ``token`` for ``row``; True when the row is finished."""
    if on_token is not None:
        on_token(row, token)
    if token in stop_set:
        result.stop_reasons[row] = "stop_token"
        result.stopped_by[row] = token
        return True
    result.tokens[row].append(token)
    return len(result.tokens[row]) >= max_new_tokens


def _generate_incremental(model, prompt_rows, max_new_tokens, options, uniforms, stop_set, on_token, result,
                          device, shrink_finished, prefill_chunk):
    lengths = [len(prompt) for prompt in prompt_rows]
    common = min(lengths)
    started = time.perf_counter()
    prefix = torch.tensor([prompt[:common] for prompt in prompt_rows], dtype=torch.int64, device=device)
    # GPT mode returns logits for every position; chunking bounds that [B, chunk, V] tensor
    # (64 prompts of 512 tokens at V = 65536 would otherwise be 8.6 GB of fp32 logits)
    chunk = prefill_chunk or max(1, _PREFILL_LOGIT_BUDGET // (len(prompt_rows) * max(model_vocab_size(model) or 1, 1)))
    state = None
    for first in range(0, common, chunk):
        logits, state = model(prefix[:, first:first + chunk], state=state, return_state=True)
        last_logits = logits[:, -1]
        del logits
        result.model_calls += 1
    _synchronize(device)
    result.prefill_seconds = time.perf_counter() - started

    started = time.perf_counter()
    consumed = [common] * len(prompt_rows)   # tokens of each row already in the state
    done = [False] * len(prompt_rows)
    active = list(range(len(prompt_rows)))   # batch position -> original row
    while True:
        # rows past their prompt choose a token from the logits of their last input
        generating = [position for position, row in enumerate(active)
                      if consumed[row] >= lengths[row] and not done[row]]
        next_tokens = [0] * len(active)
        if generating:
            chosen = _choose(last_logits[generating], [active[p] for p in generating], options, uniforms, result)
            for position, token in zip(generating, chosen):
                row = active[position]
                done[row] = _accept(row, token, max_new_tokens, stop_set, on_token, result)
                next_tokens[position] = token
        for position, row in enumerate(active):
            if consumed[row] < lengths[row]:
                next_tokens[position] = prompt_rows[row][consumed[row]]
        if all(done[row] for row in active):
            break
        if shrink_finished and hasattr(state, "select") and any(done[row] for row in active):
            keep = [position for position, row in enumerate(active) if not done[row]]
            state = state.select(torch.tensor(keep, dtype=torch.int64, device=device))
            active = [active[position] for position in keep]
            next_tokens = [next_tokens[position] for position in keep]
        # finished rows that could not be dropped keep stepping on a harmless token; ignored
        last_logits, state = model.step(torch.tensor(next_tokens, dtype=torch.int64, device=device), state)
        result.model_calls += 1
        for row in active:
            consumed[row] += 1
    _synchronize(device)
    result.decode_seconds = time.perf_counter() - started


def _generate_full_recompute(model, prompt_rows, max_new_tokens, options, uniforms, stop_set, on_token, result,
                             device, shrink_finished, prefill_chunk):
    contexts = [list(prompt) for prompt in prompt_rows]
    active = list(range(len(prompt_rows)))
    started = time.perf_counter()
    while active:
        # rows with equal context length share one forward pass
        groups: dict[int, list[int]] = {}
        for row in active:
            groups.setdefault(len(contexts[row]), []).append(row)
        still_active = []
        for length in sorted(groups):
            rows = groups[length]
            tokens = torch.tensor([contexts[row] for row in rows], dtype=torch.int64, device=device)
            logits = model(tokens)[:, -1]
            result.model_calls += 1
            chosen = _choose(logits, rows, options, uniforms, result)
            for row, token in zip(rows, chosen):
                if not _accept(row, token, max_new_tokens, stop_set, on_token, result):
                    contexts[row].append(token)
                    still_active.append(row)
        active = sorted(still_active)
    _synchronize(device)
    result.decode_seconds = time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
