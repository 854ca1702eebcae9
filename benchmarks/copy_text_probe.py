"""CPU probe of copy ability after training on text (issue 7): does the gradient clip over an
embedding gradient dominated by the ROSA estimator keep a small RWKV-8 + ROSA LM from learning
to copy?

Model: :class:`heron.models.RWKV8` with ``rosa="qkv4"`` (or ``qkv1`` by ``--bits``),
``deep_embed=False``, ``rosa_qk_init="tied"``, ``rosa_estimator="value"``, ``rosa_tau=0.1`` by
default, LM init recipe (:func:`heron.models.init.init_lm_recipe`), optimiser
:func:`heron.models.init.make_lm_optimizer` (AdamW, betas (0.9, 0.99), eps 1e-18, decay 0.1 on
matrices), loss :class:`heron.train.losses.LossModel` (summed cross-entropy / scored tokens, as
``heron train`` does). Data: random ``--seq-len`` windows of the demo corpus train split
(:class:`heron.data.text.TextSource`, World tokenizer). Every variant trains from the same seed
(same initial values, same batch sequence) for the same wall-clock budget ``--minutes``; the
learning rate warms up linearly over ``--warmup`` steps, then follows a cosine from ``--lr`` to
``--lr-final`` over the *time* budget (the step count is not known in advance).

Variants (``--variants``, comma-separated):

- ``clip_all``: the baseline, ``clip_grad_norm_(all parameters, --clip)`` as ``heron train`` does;
- ``clip_no_emb``: ``clip_grad_norm_`` over every parameter except ``emb.weight``, by their own
  norm; the embedding's gradient is left unclipped (AdamW normalises its scale anyway);
- ``detach_rosa0``: as ``clip_all``, but the input of layer 0's ROSA block (the output of
  ``blocks.0.ln3``) is detached, so no gradient flows from layer 0's ROSA q/k/v into ``ln3`` and
  the embedding (the forward pass is unchanged; layer 1's ROSA and both time-mixes still send
  their gradient to the embedding through the residual stream);
- ``scale_rosa0``: as ``clip_all``, but that gradient is multiplied by ``--rosa0-scale``
  (``x * s + x.detach() * (1 - s)`` on the same tensor) instead of cut;
- ``detach_rosa0_no_emb``: ``detach_rosa0`` with the clip of ``clip_no_emb``.

Training data (``--repeat-prob`` etc., default off): the repeat augmentation of ``heron train
text`` (:class:`heron.data.text.RepeatAugmentation`, ``--task-option repeat_prob=...``): with
probability ``--repeat-prob`` a row gets one span of ``--repeat-min`` .. ``--repeat-max`` tokens
written twice (immediately or after a gap of up to ``--repeat-gap``), the first occurrence being
random tokens of the corpus distribution with probability ``--repeat-random``;
``--repeat-count N`` writes N such spans per augmented row, one in each of N equal consecutive
segments of the row (spans then at most (``--seq-len`` + 1) // N // 2 tokens); ``--repeat-pool N``
draws the random tokens uniformly from the N most frequent training tokens instead (the copy
test's distribution, without its validation pool). With
``--repeat-prob 0`` the batches are exactly the plain windows. The validation loss never sees
augmented rows.

``--arch rosa_lm`` trains the pure ROSA LM (:class:`heron.models.ROSALM`, ``--bits`` 1 or 4, the
same width / depth / estimator / tied keys) instead of RWKV-8; as ``heron train --model rosa_lm``
it keeps its own initialisation (no LM init recipe).

Measured after training (all on held-out data):

(a) ``val_loss``: mean cross-entropy on ``--val-batches`` x ``--batch-size`` non-overlapping
    windows of the validation split;
(b) ``rep_acc``: teacher-forced argmax accuracy on the second half of ``--rep-rows`` sequences
    made of a random ``--rep-length``-token segment (drawn uniformly from the 1000 most frequent
    validation tokens, end-of-text excluded) shown twice, over the targets of the second copy
    except its first token (which no copy can predict); ``rep_acc1`` is the same on the first
    copy (what the model guesses without a repeat: the control);
(c) ``copy``: the issue's greedy copy metric (:func:`heron.generate.copy_eval.copy_eval`, same
    pool, ``--copy-length`` tokens + their first ``--copy-cue``, greedy RNN decoding of the rest)
    over ``--trials`` trials.

Also printed: the median gradient norms of ``emb.weight`` and of all other parameters over the
run (before clipping), which show how much the clip scales the rest down.

Example (docs/benchmarks/copy.md, "CPU probe: copying after training on text, gradient clipping"):

    OMP_NUM_THREADS=1 python benchmarks/copy_text_probe.py --variants clip_all --minutes 7
    OMP_NUM_THREADS=1 python benchmarks/copy_text_probe.py --variants clip_no_emb --minutes 7

(one process per variant lets two run side by side; ``--json FILE`` keeps the row.)

Repeat augmentation (docs/benchmarks/copy.md, "Repeat augmentation on the CPU"):

    OMP_NUM_THREADS=1 python benchmarks/copy_text_probe.py --variants clip_all --minutes 7 --repeat-prob 0.5

Three repeated spans per row (docs/benchmarks/copy.md, "Sixth session"):

    OMP_NUM_THREADS=1 python benchmarks/copy_text_probe.py --variants clip_all --minutes 6 --repeat-prob 1 --repeat-count 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from heron.data.text import (
    RepeatAugmentation,
    TextSource,
    demo_corpus_tokens,
    most_frequent_tokens,
)
from heron.generate.copy_eval import copy_eval
from heron.models import ROSALM, RWKV8, ROSALMConfig, RWKV8Config
from heron.models.init import init_lm_recipe, make_lm_optimizer
from heron.train.losses import LossModel

VARIANTS = ("clip_all", "clip_no_emb", "detach_rosa0", "scale_rosa0", "detach_rosa0_no_emb")


def build_model(args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    if args.arch == "rosa_lm":
        return ROSALM(ROSALMConfig(n_layer=args.layers, n_embd=args.dim, vocab_size=args.vocab, bits=args.bits,
                                   rosa_estimator=args.estimator, rosa_tau=args.tau, rosa_qk_init=args.qk_init))
    rosa = None if args.bits == 0 else f"qkv{args.bits}"
    config = RWKV8Config(n_layer=args.layers, n_embd=args.dim, vocab_size=args.vocab, head_size=args.head_size,
                         rosa=rosa, deep_embed=False, rosa_estimator=args.estimator, rosa_tau=args.tau,
                         rosa_qk_init=args.qk_init)
    return init_lm_recipe(RWKV8(config))


def add_rosa0_gradient_scale(model: RWKV8, scale: float):
    """Scale (0: cut) the gradient that leaves layer 0's ROSA block through its input."""
    def hook(module, inputs):
        x = inputs[0]
        x = x.detach() if scale == 0 else x * scale + x.detach() * (1.0 - scale)
        return (x, *inputs[1:])
    return model.blocks[0].rosa.register_forward_pre_hook(hook)


def cosine_lr(step: int, progress: float, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(max(progress, 0.0), 1.0)
    return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def validation_loss(loss_model, source: TextSource, args) -> float:
    total, count = 0.0, 0
    for inputs, targets in source.sequential_batches(args.batch_size, max_batches=args.val_batches):
        total += loss_model(inputs, targets).item()
        count += targets.numel()
    return total / count


@torch.no_grad()
def repeat_accuracy(model, pool: torch.Tensor, args) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(args.seed + 20_011)
    L = args.rep_length
    segment = pool[torch.randint(0, pool.numel(), (args.rep_rows, L), generator=generator)]
    sequence = torch.cat([segment, segment], dim=1)
    predicted = model(sequence[:, :-1]).argmax(-1)   # position t predicts sequence[t + 1]
    targets = sequence[:, 1:]
    second = (predicted[:, L:] == targets[:, L:]).double().mean().item()          # targets seg[1:] again
    first = (predicted[:, :L - 1] == targets[:, :L - 1]).double().mean().item()   # targets seg[1:] first time
    return second, first


def run(variant: str, args, train: TextSource, validation: TextSource, pool: torch.Tensor) -> dict:
    model = build_model(args)
    parameters = sum(p.numel() for p in model.parameters())
    if variant.startswith("detach_rosa0"):
        add_rosa0_gradient_scale(model, 0.0)
    elif variant == "scale_rosa0":
        add_rosa0_gradient_scale(model, args.rosa0_scale)
    loss_model = LossModel(model, args.vocab, "text")
    optimizer = make_lm_optimizer(model, args.lr)
    emb = model.emb.weight
    others = [p for name, p in model.named_parameters() if p is not emb]
    clipped = others if variant.endswith("no_emb") else list(model.parameters())
    generator = torch.Generator().manual_seed(args.seed)
    budget = 60.0 * args.minutes
    emb_norms, other_norms, losses = [], [], []
    step, start = 0, time.perf_counter()
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (args.max_steps and step >= args.max_steps):
            break
        lr = cosine_lr(step, elapsed / budget, args)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        inputs, targets = train.batch(args.batch_size, generator)
        loss = loss_model(inputs, targets) / targets.numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        emb_norms.append(emb.grad.norm().item())
        other_norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in others if p.grad is not None])).item())
        torch.nn.utils.clip_grad_norm_(clipped, args.clip)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            recent = losses[-args.log_every:]
            print(f"{variant:20s} step {step:5d} loss {sum(recent) / len(recent):.3f} lr {lr:.2e} "
                  f"|g_emb| {emb_norms[-1]:.3g} |g_rest| {other_norms[-1]:.3g} ({elapsed:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    val = validation_loss(loss_model, validation, args)
    rep_second, rep_first = repeat_accuracy(model, pool, args)
    result = copy_eval(model, pool, trials=args.trials, length=args.copy_length, cue=args.copy_cue, seed=args.seed,
                       batch_size=args.trials)
    tail = losses[-args.log_every:]
    row = {"variant": variant, "model": model_label(args), "repeat_prob": args.repeat_prob,
           "repeat_count": args.repeat_count, "repeat_pool": args.repeat_pool,
           "parameters": parameters, "steps": step, "train_seconds": train_seconds,
           "tokens": step * args.batch_size * args.seq_len, "train_loss": sum(tail) / len(tail), "val_loss": val,
           "rep_acc": rep_second, "rep_acc1": rep_first, "copy": result.token_accuracy, "copy_exact": result.exact_share,
           "median_grad_emb": statistics.median(emb_norms), "median_grad_rest": statistics.median(other_norms),
           "eval_seconds": time.perf_counter() - start - train_seconds}
    print(f"{variant:20s} done: {step} steps, train {row['train_loss']:.3f} val {val:.3f} rep_acc {100 * rep_second:.1f}% "
          f"(first copy {100 * rep_first:.1f}%) copy {100 * result.token_accuracy:.2f}% "
          f"({row['eval_seconds']:.0f} s eval)", flush=True)
    return row


def model_label(args) -> str:
    if args.arch == "rosa_lm":
        return f"rosa_lm{args.bits}"
    return "rwkv7" if args.bits == 0 else f"rwkv8+rosa{args.bits}"


HEADER = (f"{'model':11s} {'repeat':>6s} {'variant':20s} {'steps':>6s} {'train':>6s} {'val':>6s} {'rep_acc':>8s} {'rep_acc1':>8s} {'copy':>7s} "
          f"{'exact':>6s} {'|g_emb|':>9s} {'|g_rest|':>9s}")


def format_row(r: dict) -> str:
    return (f"{r.get('model', ''):11s} {r.get('repeat_prob', 0.0):6.2f} {r['variant']:20s} {r['steps']:6d} {r['train_loss']:6.3f} {r['val_loss']:6.3f} {100 * r['rep_acc']:7.1f}% "
            f"{100 * r['rep_acc1']:7.1f}% {100 * r['copy']:6.2f}% {100 * r['copy_exact']:5.0f}% "
            f"{r['median_grad_emb']:9.3g} {r['median_grad_rest']:9.3g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring / docs/benchmarks/copy.md for the protocol.")
    parser.add_argument("--variants", default="clip_all,clip_no_emb",
                        help=f"comma-separated, run one after the other: {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock training budget per variant")
    parser.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (0: no cap)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dim", type=int, default=128, help="n_embd")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--bits", type=int, default=4, choices=(0, 1, 4), help="ROSA-QKV symbol width (0: RWKV-7)")
    parser.add_argument("--arch", default="rwkv8", choices=("rwkv8", "rosa_lm"),
                        help="RWKV-8 (+ ROSA-QKV unless --bits 0) or the pure ROSA LM")
    parser.add_argument("--estimator", default="value", choices=("window", "flip", "value"))
    parser.add_argument("--qk-init", default="tied", choices=("tied", "independent"))
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--rosa0-scale", type=float, default=1e-3, help="gradient factor of scale_rosa0")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-final", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--rep-rows", type=int, default=64)
    parser.add_argument("--rep-length", type=int, default=32)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--copy-length", type=int, default=64)
    parser.add_argument("--copy-cue", type=int, default=8)
    parser.add_argument("--repeat-prob", type=float, default=0.0,
                        help="repeat augmentation of the training rows (heron train text's repeat_prob; 0: off)")
    parser.add_argument("--repeat-min", type=int, default=16)
    parser.add_argument("--repeat-max", type=int, default=128)
    parser.add_argument("--repeat-random", type=float, default=0.5)
    parser.add_argument("--repeat-gap", type=int, default=32)
    parser.add_argument("--repeat-count", type=int, default=1,
                        help="repeated spans per augmented row, one per equal segment of the row")
    parser.add_argument("--repeat-pool", type=int, default=0,
                        help="random spans uniform over this many most frequent training tokens (0: unigram draws)")
    parser.add_argument("--json", help="write the rows (and the arguments) to this file")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown} (choose from {', '.join(VARIANTS)})")
    if args.bits == 0 and any("rosa0" in v for v in variants):
        parser.error("the *_rosa0 variants need a ROSA block (--bits 1 or 4)")
    if not 1 <= args.copy_cue < args.copy_length:
        parser.error("need 1 <= --copy-cue < --copy-length")
    if args.arch == "rosa_lm" and args.bits == 0:
        parser.error("--arch rosa_lm needs --bits 1 or 4")
    if args.arch == "rosa_lm" and any("rosa0" in v for v in variants):
        parser.error("the *_rosa0 variants hook RWKV-8's ROSA block; not available with --arch rosa_lm")
    try:
        repeats = RepeatAugmentation(repeat_prob=args.repeat_prob, repeat_min=args.repeat_min,
                                     repeat_max=args.repeat_max, repeat_random=args.repeat_random,
                                     repeat_gap=args.repeat_gap, repeat_count=args.repeat_count,
                                     repeat_pool=args.repeat_pool)
        if repeats.enabled:
            repeats.check_seq_len(args.seq_len)
    except ValueError as exc:  # the messages start with the option's name: repeat_prob -> --repeat-prob
        parser.error(f"--{str(exc).replace('_', '-', 1)}")
    train = TextSource.demo("train", seq_len=args.seq_len).with_repeats(repeats)
    validation = TextSource.demo("validation", seq_len=args.seq_len)
    args.vocab = train.vocab_size
    pool = most_frequent_tokens(demo_corpus_tokens("validation"), 1000)
    # one untimed forward/backward first, so one-time set-up costs (kernel compilation, caches)
    # do not come out of the first variant's budget
    warm = build_model(args)
    inputs, targets = train.batch(args.batch_size, torch.Generator().manual_seed(args.seed + 1))
    (LossModel(warm, args.vocab, "text")(inputs, targets) / targets.numel()).backward()
    del warm
    rows = [run(variant, args, train, validation, pool) for variant in variants]
    print("\n" + HEADER)
    for row in rows:
        print(format_row(row))
    print(f"(chance on the repeat: 1/1000 = 0.1%; {args.copy_length}-token prompts + cue {args.copy_cue}, "
          f"{args.trials} trials; |g| = median pre-clip gradient norm)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
