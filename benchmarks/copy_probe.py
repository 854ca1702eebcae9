"""CPU probe of copy ability (issue 7): tiny LMs trained on synthetic data where copying is the
only way to predict, then scored with the copy protocol of heron/generate/copy_eval.py.

Data: every training sequence is a segment of ``L`` uniformly random tokens (``L`` drawn from
``--seg-min .. --seg-max`` per sequence) repeated until ``--seq-len + 1`` tokens; the loss covers
every position. The first ``L - 1`` targets of a row are unpredictable; the rest (the "copy
positions") are predictable only by retrieving what followed the same token earlier. The printed
``copy_loss`` / ``copy_acc`` are the teacher-forced loss and argmax accuracy on copy positions of a
held-out batch (chance: ln V nats, 1 / V).

Evaluation: :func:`heron.generate.copy_eval.copy_eval` with the pool = the whole vocabulary:
``--copy-length`` random tokens + their first ``--copy-cue``, greedy decoding of the rest (RNN
mode), share of correct tokens over ``--trials`` trials.

Models (``--models``, comma-separated):
- ``rosa``: pure ROSA LM (:class:`heron.models.ROSALM`, torch-default init as ``heron train
  --model rosa_lm`` builds it);
- ``rwkv8``: RWKV-8 + ROSA-QKV (:class:`heron.models.RWKV8`, ``rosa="qkv1"`` or ``"qkv4"`` by
  ``--bits``, ``deep_embed=False``, LM init recipe as ``heron train text`` does);
- ``rwkv7``: the same RWKV-8 without ROSA (``rosa=None``).
Every (model, ``--qk-init``) pair trains with the same seed (so the same data and the same
initial values apart from the key projection); optimiser = the LM recipe's AdamW
(:func:`heron.models.init.make_lm_optimizer`), linear warm-up then cosine to ``--lr-final``,
grad-norm clip 1.

Example (the figures of docs/benchmarks/copy.md, "CPU probe: synthetic copying"):

    OMP_NUM_THREADS=1 python benchmarks/copy_probe.py --models rosa,rwkv8,rwkv7 \\
        --qk-init independent,tied --steps 300

Tokens never in the training rows (``--unseen N``): ids ``V - N .. V - 1`` occur neither in the
noise prefix nor in a segment, as some tokens of the GPU copy test never occur in the training
text; ``--uniform-share P`` draws each segment, with probability ``P``, uniformly from all ``V``
ids instead (the trainer's ``repeat_uniform``), so those ids occur in segments only. The final
test then splits its trials by whether the prompt holds an unseen id, and scores prompts drawn
from the seen ids only and from the unseen ids only:

    OMP_NUM_THREADS=1 python benchmarks/copy_probe.py --models rwkv8 --qk-init tied --bits 4 \\
        --estimator value --noise-max 16 --steps 300 --extra-cues "" --unseen 64 --uniform-share 0.5

Prints one line per evaluation and a final table; ``--json FILE`` writes every curve.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from heron.generate.copy_eval import copy_eval, copy_prompts
from heron.models import ROSALM, RWKV8, ROSALMConfig, RWKV8Config
from heron.models.init import LM_GRAD_CLIP, init_lm_recipe, lm_learning_rate, make_lm_optimizer


def copy_batch(batch_size: int, seq_len: int, vocab_size: int, seg_min: int, seg_max: int,
               generator: torch.Generator, span_pool: int = 0, noise_max: int = 0, unseen: int = 0,
               uniform_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs [B, T], targets [B, T], copy_mask [B, T])``: each row a random segment repeated.

    ``span_pool`` > 0: the segment's tokens are drawn from ``0 .. span_pool - 1`` only (0: the
    whole vocabulary). ``noise_max`` > 0: each row starts with ``0 .. noise_max`` tokens drawn
    from the whole vocabulary, so tokens outside the pool are seen, but never in a segment.
    ``unseen`` > 0: the "whole vocabulary" above stops at ``vocab_size - unseen - 1``, so the top
    ``unseen`` ids never occur. ``uniform_share`` > 0: each row's segment is, with that
    probability, drawn uniformly from all ``vocab_size`` ids instead (unseen ones included)."""
    seen = vocab_size - unseen
    lengths = torch.randint(seg_min, seg_max + 1, (batch_size,), generator=generator)
    tokens = torch.randint(0, span_pool or seen, (batch_size, seq_len + 1), generator=generator)
    position = torch.arange(seq_len + 1)
    if noise_max:
        offsets = torch.randint(0, noise_max + 1, (batch_size,), generator=generator)
        noise = torch.randint(0, seen, (batch_size, seq_len + 1), generator=generator)
    else:
        offsets = torch.zeros(batch_size, dtype=torch.int64)
        noise = tokens
    if uniform_share:
        # drawn last, so lengths, offsets, noise and the other segments stay those of the same
        # seed without it (and the default stream is untouched)
        uniform_rows = torch.rand(batch_size, generator=generator) < uniform_share
        uniform = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=generator)
        tokens = torch.where(uniform_rows.unsqueeze(1), uniform, tokens)
    shifted = (position.unsqueeze(0) - offsets.unsqueeze(1)).clamp_min(0)
    source = shifted % lengths.unsqueeze(1)                         # index into the segment
    rows = torch.where(position.unsqueeze(0) < offsets.unsqueeze(1), noise, tokens.gather(1, source))
    # target t + 1 repeats an earlier token
    copy_mask = position[1:].unsqueeze(0) >= (offsets + lengths).unsqueeze(1)
    return rows[:, :-1], rows[:, 1:], copy_mask


def build_model(kind: str, args, qk_init: str) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    common = dict(n_layer=args.layers, n_embd=args.dim, vocab_size=args.vocab, rosa_estimator=args.estimator,
                  rosa_tau=args.tau, rosa_qk_init=qk_init)
    if kind == "rosa":
        return ROSALM(ROSALMConfig(bits=args.bits, rosa_window=args.window, **common))
    if kind in ("rwkv8", "rwkv7"):
        rosa = f"qkv{args.bits}" if kind == "rwkv8" else None
        model = RWKV8(RWKV8Config(head_size=args.head_size, rosa=rosa, deep_embed=False, **common))
        return init_lm_recipe(model)
    raise ValueError(f"--models: unknown model {kind!r} (rosa, rwkv8, rwkv7)")


@torch.no_grad()
def first_repeat_accuracy(model, args, rows: int = 64) -> list[float]:
    """Teacher-forced argmax accuracy at offsets ``0 .. L-1`` of the first repeat of an
    ``L = --copy-length`` segment (the situation of the generation test, where offset ``cue`` is
    the first generated token)."""
    generator = torch.Generator().manual_seed(args.seed + 20_011)
    segment = torch.randint(0, args.vocab, (rows, args.copy_length), generator=generator)
    sequence = torch.cat([segment, segment], dim=1)
    logits = model(sequence[:, :-1])
    correct = logits.argmax(-1)[:, args.copy_length - 1:] == segment
    return correct.double().mean(dim=0).tolist()


@torch.no_grad()
def unseen_target_accuracy(model, args, rows: int = 64) -> dict:
    """Teacher-forced argmax accuracy on the whole first repeat of the segments of
    :func:`first_repeat_accuracy` (offsets ``1 .. L-1``, where the token is retrievable), split by
    whether the target is an unseen id: can the head emit a token only ever met in a segment (or
    never)? Also the mean rank of the target among the logits there (0: argmax)."""
    generator = torch.Generator().manual_seed(args.seed + 20_011)
    segment = torch.randint(0, args.vocab, (rows, args.copy_length), generator=generator)
    logits = model(torch.cat([segment, segment], dim=1)[:, :-1])[:, args.copy_length:].float()
    targets = segment[:, 1:]
    correct = logits.argmax(-1) == targets
    rank = (logits > logits.gather(-1, targets.unsqueeze(-1))).sum(-1).double()
    is_unseen = targets >= args.vocab - args.unseen
    return {f"tf_{name}_{key}": (value[mask].mean().item() if mask.any() else None)
            for name, mask in (("unseen", is_unseen), ("seen", ~is_unseen))
            for key, value in (("acc", correct.double()), ("rank", rank))}


def trials_with_unseen(args) -> torch.Tensor:
    """Per trial of the final whole-vocabulary copy test, whether its prompt holds an unseen id:
    the prompts :func:`copy_eval` draws, rebuilt from the same seed."""
    prompts, _ = copy_prompts(torch.arange(args.vocab), args.trials, args.copy_length, args.copy_cue,
                              torch.Generator().manual_seed(args.seed))
    return (prompts >= args.vocab - args.unseen).any(dim=1)


def subset_copy_accuracy(model, low: int, high: int, args) -> float:
    """The final copy test's token accuracy on prompts drawn from token ids ``low .. high - 1``."""
    return copy_eval(model, torch.arange(low, high), trials=args.trials, length=args.copy_length,
                     cue=args.copy_cue, seed=args.seed, batch_size=args.trials).token_accuracy


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def rank(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


@torch.no_grad()
def teacher_forced(model, batch) -> tuple[float, float]:
    inputs, targets, mask = batch
    logits = model(inputs).float()
    loss = F.cross_entropy(logits[mask], targets[mask]).item()
    accuracy = (logits.argmax(-1)[mask] == targets[mask]).double().mean().item()
    return loss, accuracy


def run(kind: str, qk_init: str, args) -> dict:
    model = build_model(kind, args, qk_init)
    params = sum(p.numel() for p in model.parameters())
    optimizer = make_lm_optimizer(model, args.lr)
    data = torch.Generator().manual_seed(args.seed)
    held_out = copy_batch(args.eval_batch, args.seq_len, args.vocab, args.seg_min, args.seg_max,
                          torch.Generator().manual_seed(args.seed + 10_007), args.span_pool, args.noise_max,
                          args.unseen, args.uniform_share)
    pool = torch.arange(args.vocab)
    curve, start = [], time.time()
    for step in range(args.steps):
        lr = lm_learning_rate(step, args.steps, args.lr, args.lr_final, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        inputs, targets, _ = copy_batch(args.batch_size, args.seq_len, args.vocab, args.seg_min, args.seg_max, data,
                                        args.span_pool, args.noise_max, args.unseen, args.uniform_share)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), LM_GRAD_CLIP)
        optimizer.step()
        last = step + 1 == args.steps
        if last or (args.eval_every and (step + 1) % args.eval_every == 0):
            model.eval()
            copy_loss, copy_acc = teacher_forced(model, held_out)
            point = {"step": step + 1, "train_loss": loss.item(), "copy_loss": copy_loss, "copy_acc": copy_acc,
                     "seconds": time.time() - start}
            if last or args.copy_every_eval:
                result = copy_eval(model, pool, trials=args.trials, length=args.copy_length, cue=args.copy_cue,
                                   seed=args.seed, batch_size=args.trials)
                point["copy_token_accuracy"] = result.token_accuracy
                point["copy_exact"] = result.exact_share
                if last and args.unseen:
                    point["copy_per_trial_accuracy"] = result.per_trial_accuracy
            if last and args.span_pool:
                # prompts from the segments' pool only, and from the tokens never in a segment
                point["copy_token_accuracy_in_pool"] = subset_copy_accuracy(model, 0, args.span_pool, args)
                point["copy_token_accuracy_out_of_pool"] = subset_copy_accuracy(model, args.span_pool, args.vocab, args)
            if last and args.unseen:
                # the whole-vocabulary test split by trial; with V = 512 and 64 unseen ids, a
                # 32-token prompt lacks one in only ~1.4% of trials, hence the two extra sets
                per_trial = torch.tensor(point["copy_per_trial_accuracy"], dtype=torch.float64)
                has_unseen = trials_with_unseen(args)
                for name, mask in (("with_unseen", has_unseen), ("without_unseen", ~has_unseen)):
                    point[f"copy_trials_{name}"] = int(mask.sum())
                    point[f"copy_token_accuracy_{name}"] = per_trial[mask].mean().item() if mask.any() else None
                seen = args.vocab - args.unseen
                point["copy_token_accuracy_seen_only"] = subset_copy_accuracy(model, 0, seen, args)
                point["copy_token_accuracy_unseen_only"] = subset_copy_accuracy(model, seen, args.vocab, args)
                point.update(unseen_target_accuracy(model, args))
            if last:
                point["first_repeat_acc"] = first_repeat_accuracy(model, args)
                for cue in args.extra_cues:
                    result = copy_eval(model, pool, trials=args.trials, length=args.copy_length, cue=cue,
                                       seed=args.seed, batch_size=args.trials)
                    point[f"copy_token_accuracy_cue{cue}"] = result.token_accuracy
            model.train()
            curve.append(point)
            extra = (f" copy-eval {100 * point['copy_token_accuracy']:.1f}%"
                     if "copy_token_accuracy" in point else "")
            for cue in args.extra_cues if last else ():
                extra += f" (cue {cue}: {100 * point[f'copy_token_accuracy_cue{cue}']:.1f}%)"
            if last and args.span_pool:
                extra += (f" (prompts from the pool: {100 * point['copy_token_accuracy_in_pool']:.1f}%, "
                          f"from outside it: {100 * point['copy_token_accuracy_out_of_pool']:.1f}%)")
            if last and args.unseen:
                extra += (f" (trials with an unseen id: {percent(point['copy_token_accuracy_with_unseen'])} of "
                          f"{point['copy_trials_with_unseen']}, without: "
                          f"{percent(point['copy_token_accuracy_without_unseen'])} of "
                          f"{point['copy_trials_without_unseen']}; prompts from the seen ids only: "
                          f"{percent(point['copy_token_accuracy_seen_only'])}, unseen only: "
                          f"{percent(point['copy_token_accuracy_unseen_only'])}; teacher-forced repeat acc "
                          f"on unseen / seen targets {percent(point['tf_unseen_acc'])} / "
                          f"{percent(point['tf_seen_acc'])}, mean target rank {rank(point['tf_unseen_rank'])} / "
                          f"{rank(point['tf_seen_rank'])})")
            if last:
                first = point["first_repeat_acc"]
                extra += " first-repeat acc at offsets 0..8: " + " ".join(f"{a:.2f}" for a in first[:9])
            print(f"{kind:5s} {qk_init:11s} step {step + 1:4d} loss {loss.item():.3f} copy_loss {copy_loss:.3f} "
                  f"copy_acc {100 * copy_acc:.1f}%{extra} ({point['seconds']:.0f} s)", flush=True)
    return {"model": kind, "qk_init": qk_init, "parameters": params, "curve": curve, **curve[-1]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring / docs/benchmarks/copy.md for the protocol.")
    parser.add_argument("--models", default="rosa,rwkv8,rwkv7", help="comma-separated: rosa, rwkv8, rwkv7")
    parser.add_argument("--qk-init", default="independent,tied",
                        help="comma-separated ROSA-QKV key inits to compare (independent, tied); rwkv7 runs once")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seg-min", type=int, default=8, help="shortest repeated segment")
    parser.add_argument("--seg-max", type=int, default=48, help="longest repeated segment")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--span-pool", type=int, default=0,
                        help="draw the segments from tokens 0 .. N-1 only (0: the whole vocabulary); the final "
                             "test then also scores prompts from inside and from outside that pool")
    parser.add_argument("--noise-max", type=int, default=0,
                        help="start each row with 0 .. N tokens from the whole vocabulary (so tokens outside "
                             "--span-pool occur, never in a segment)")
    parser.add_argument("--unseen", type=int, default=0,
                        help="the top N ids (V-N .. V-1) never occur in the training rows (unless via "
                             "--uniform-share); the final test then splits its trials by them")
    parser.add_argument("--uniform-share", type=float, default=0.0,
                        help="draw each segment, with this probability, uniformly from all --vocab ids "
                             "(unseen ones included) instead of the usual pool")
    parser.add_argument("--dim", type=int, default=64, help="n_embd")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=16, help="RWKV time-mix head size")
    parser.add_argument("--bits", type=int, default=1, choices=(1, 4), help="ROSA-QKV symbol width")
    parser.add_argument("--estimator", default="window", choices=("window", "flip", "value"))
    parser.add_argument("--window", type=int, default=16, help="window estimator span (ROSA LM only)")
    parser.add_argument("--tau", type=float, default=0.1, help="estimator denominator floor")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-final", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--copy-every-eval", action="store_true", help="run the generation test at every eval")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--copy-length", type=int, default=32)
    parser.add_argument("--copy-cue", type=int, default=4)
    parser.add_argument("--extra-cues", default="8,16",
                        help="comma-separated further cue lengths for the final generation test ('' = none)")
    parser.add_argument("--json", help="write every curve to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.seg_min <= args.seg_max <= args.seq_len:
        parser.error("need 1 <= --seg-min <= --seg-max <= --seq-len")
    if not 0 <= args.span_pool < args.vocab or args.span_pool == 1:
        parser.error("--span-pool: 0 (the whole vocabulary) or 2 .. --vocab - 1")
    if not 0 <= args.noise_max < args.seq_len - args.seg_max:
        parser.error("--noise-max: 0 .. --seq-len - --seg-max - 1 (room for the segment and a repeat)")
    if not 0 <= args.unseen <= args.vocab - 2:
        parser.error("--unseen: 0 .. --vocab - 2 (at least two ids must stay seen)")
    if args.span_pool > args.vocab - args.unseen:
        parser.error("--span-pool: at most --vocab - --unseen (the pool must hold seen ids only)")
    if not 0.0 <= args.uniform_share <= 1.0:
        parser.error(f"--uniform-share: expected a probability in [0, 1], got {args.uniform_share}")
    args.extra_cues = [int(cue) for cue in args.extra_cues.split(",") if cue.strip()]
    if any(not 1 <= cue < args.copy_length for cue in [args.copy_cue, *args.extra_cues]):
        parser.error("cues must lie in 1 .. --copy-length - 1")
    results = []
    for kind in args.models.split(","):
        inits = ["independent"] if kind == "rwkv7" else args.qk_init.split(",")
        for qk_init in inits:
            results.append(run(kind, qk_init, args))
    cues = "".join(f" {'cue ' + str(cue):>7s}" for cue in args.extra_cues)
    print(f"\n{'model':6s} {'qk_init':11s} {'params':>8s} {'copy_loss':>9s} {'copy_acc':>8s} "
          f"{'copy-eval':>9s} {'exact':>6s}{cues} {'time':>6s}")
    for r in results:
        cues = "".join(f" {100 * r[f'copy_token_accuracy_cue{cue}']:6.1f}%" for cue in args.extra_cues)
        print(f"{r['model']:6s} {r['qk_init']:11s} {r['parameters']:8d} {r['copy_loss']:9.3f} "
              f"{100 * r['copy_acc']:7.1f}% {100 * r['copy_token_accuracy']:8.1f}% {100 * r['copy_exact']:5.0f}%"
              f"{cues} {r['seconds']:5.0f}s")
    print(f"(chance: copy_loss ln V = {math.log(args.vocab):.3f}, accuracy {100 / args.vocab:.2f}%)")
    if args.unseen:
        print(f"\nids {args.vocab - args.unseen} .. {args.vocab - 1} never in the training rows"
              f"{f' outside the uniform segments (share {args.uniform_share})' if args.uniform_share else ''}; "
              f"copy-eval by prompt:")
        print(f"{'model':6s} {'qk_init':11s} {'all':>6s} {'with unseen':>14s} {'without':>12s} "
              f"{'seen-only':>9s} {'unseen-only':>11s} {'tf unseen':>9s} {'tf seen':>7s}")
        for r in results:
            print(f"{r['model']:6s} {r['qk_init']:11s} {percent(r['copy_token_accuracy']):>6s} "
                  f"{percent(r['copy_token_accuracy_with_unseen']):>6s} ({r['copy_trials_with_unseen']:3d})  "
                  f"{percent(r['copy_token_accuracy_without_unseen']):>6s} ({r['copy_trials_without_unseen']:3d}) "
                  f"{percent(r['copy_token_accuracy_seen_only']):>9s} {percent(r['copy_token_accuracy_unseen_only']):>11s} "
                  f"{percent(r['tf_unseen_acc']):>9s} {percent(r['tf_seen_acc']):>7s}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
