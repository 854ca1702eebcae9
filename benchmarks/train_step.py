"""Training-step throughput of RWKV-7 / RWKV-8 / RWKV-8 + ROSA language models (issue 9).

One optimiser step = forward, summed next-token cross-entropy, backward, gradient clipping
(norm 1) and AdamW (the LM recipe's parameter groups), on random tokens, bf16 autocast on GPU.
Configurations (L12-D768, vocabulary 65536, head size 64, ``--configs``):

    rwkv7            RWKV8Config(rosa=None, deep_embed=False): the RWKV-7 model
    rwkv8            deep_embed=True (x080 channel-mix with the DeepEmbed tables)
    rwkv8-rosa       deep_embed=True, rosa="qkv1", rosa_estimator="window" (ROSA-QKV 1-bit)
    rwkv8-rosa-value deep_embed=True, rosa="qkv4", rosa_estimator="value", rosa_qk_init="tied"
    rwkv8-rosa1-value  the same with rosa="qkv1" (1-bit symbols)
    rwkv8-rosa-shared / rwkv8-rosa1-shared  those two with rosa_qk_init="shared" (the same model
                     under the value estimator: token ROSA, one projection fewer)
                     (the ROSA rows have rosa_max_gain=1.0: see docs/estimators.md, "Deep models")
    rwkv8-rosa-unbounded  rwkv8-rosa without the bound (the spec's estimator as is): a diagnosis
    rwkv7-L24-D2048  RWKV-7, 24 layers, width 2048 (the FSDP2 configuration)

Per configuration it prints tokens/s (all processes), the step time, a breakdown (WKV kernels
forward+backward, ROSA forward, ROSA backward, the rest; from ``torch.profiler`` over two extra
steps: each outermost matching host op counts max(host time, device time of the kernels it
launched); kernels are not counted on their own, so nothing is counted twice), the host-device
synchronisations per step (CUDA synchronise calls; on the CPU the tensor values read by the
host), the peak memory per process and the MFU = 6 * N * tokens/s / (989 TFLOP/s * GPUs), N = the
parameters of the matrix products (every parameter except the token-embedding and DeepEmbed lookup tables; the head
counts; the WKV recurrence and ROSA are not counted). 989 TFLOP/s is the H100 SXM bf16 dense
peak. Targets printed beside the figures: RWKV-7 >= 150k tokens/s on one H100 at ctx 512;
RWKV-8 + ROSA >= 0.5x RWKV-7; 2 GPUs >= 1.8x and 4 GPUs >= 3.4x one GPU (``--baseline``).

    python benchmarks/train_step.py --ctx 512 --batch 16 --json one.json
    torchrun --nproc_per_node=4 benchmarks/train_step.py --ctx 512 --batch 16 --baseline one.json
    torchrun --nproc_per_node=4 benchmarks/train_step.py --parallel fsdp --configs rwkv7-L24-D2048,rwkv8
    python benchmarks/train_step.py --loss-curve 200 --batch 32 --csv curve_1gpu.csv
    python benchmarks/train_step.py --configs rwkv7 --ctx 512 4096 --tokens-per-step 16384 --compile
    python benchmarks/train_step.py --tiny --steps 2 --warmup 1        # CPU smoke run

Progress lines (``[config ctx] ...``) and each configuration's figures are printed as soon as they
exist, and ``--json`` is rewritten after every configuration, so a run cut short by a time limit
keeps what it finished; ``--time-budget`` bounds each configuration. With ``--compile`` the first
warm-up step holds the compilation; it is reported apart (``compile_s``) and never timed.

Under torchrun ``--batch`` is per process (the global batch grows with the processes) and the
model runs in DDP (``--parallel ddp``) or FSDP2 (``--parallel fsdp``: ``fully_shard`` per block).
``--loss-curve STEPS`` instead trains the RWKV-7 model (L6-D512) with ``heron train text`` on the
demo corpus for STEPS steps with ``--batch`` as the GLOBAL batch (the same for any number of
processes), and writes the per-step training loss to ``--csv``: the 1-, 2- and 4-GPU curves
should coincide up to float reduction order.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H100_BF16_PEAK = 989e12
TARGET_RWKV7_TOKENS_PER_S = 150_000  # one H100, ctx 512, bf16
TARGET_ROSA_FRACTION = 0.5
TARGET_SCALING = {2: 1.8, 4: 3.4}

BASE = dict(n_layer=12, n_embd=768, vocab_size=65536, head_size=64)
CONFIGS = {
    "rwkv7": dict(BASE, rosa=None, deep_embed=False),
    "rwkv8": dict(BASE, rosa=None, deep_embed=True),
    # rosa_max_gain=1: unbounded, the estimators' gain compounds over the 12 layers to a gradient norm
    # of ~1e19 and the clip then leaves nothing to train (docs/estimators.md, "Deep models")
    "rwkv8-rosa": dict(BASE, rosa="qkv1", rosa_estimator="window", rosa_max_gain=1.0, deep_embed=True),
    # the cheapest estimator (O(T) per stream, plain PyTorch) with the tied keys it needs to copy
    # (docs/benchmarks/copy.md): the ROSA forward is then the only ROSA kernel of the step
    "rwkv8-rosa-value": dict(BASE, rosa="qkv4", rosa_estimator="value", rosa_qk_init="tied", rosa_max_gain=1.0,
                             deep_embed=True),
    # the same estimator on 1-bit symbols (the official ROSA-QKV width)
    "rwkv8-rosa1-value": dict(BASE, rosa="qkv1", rosa_estimator="value", rosa_qk_init="tied", rosa_max_gain=1.0,
                              deep_embed=True),
    # the same two with shared keys (rosa_qk_init="shared"): under the value estimator a tied k never
    # leaves q, so this is the same model with one projection fewer and token ROSA in the engine
    "rwkv8-rosa-shared": dict(BASE, rosa="qkv4", rosa_estimator="value", rosa_qk_init="shared", rosa_max_gain=1.0,
                              deep_embed=True),
    "rwkv8-rosa1-shared": dict(BASE, rosa="qkv1", rosa_estimator="value", rosa_qk_init="shared",
                               rosa_max_gain=1.0, deep_embed=True),
    "rwkv7-L24-D2048": dict(BASE, n_layer=24, n_embd=2048, rosa=None, deep_embed=False),
    # the spec's unbounded estimator, for the diagnosis only (its gradient norm overflows at 12 layers)
    "rwkv8-rosa-unbounded": dict(BASE, rosa="qkv1", rosa_estimator="window", deep_embed=True),
}
TINY = dict(n_layer=2, n_embd=64, vocab_size=512, head_size=16)
LOSS_CURVE_MODEL = dict(n_layer=6, n_embd=512, head_size=64, rosa=None, deep_embed=False)

CATEGORIES = (  # (label, test on the lower-cased op name); the first match wins
    ("wkv", lambda name: "wkv7" in name),
    ("rosa_bwd", lambda name: "rosa" in name and "backward" in name),
    ("rosa_fwd", lambda name: "rosa" in name),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="rwkv7,rwkv8,rwkv8-rosa,rwkv8-rosa-value",
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: %(default)s)")
    parser.add_argument("--ctx", type=int, nargs="+", default=None,
                        help="context length(s) (default 512; 64 with --tiny)")
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences per process and step (default 16; 2 with --tiny); with --loss-curve the "
                             "GLOBAL batch (default 32)")
    parser.add_argument("--tokens-per-step", type=int, default=0, metavar="N",
                        help="instead of --batch: batch = N // ctx sequences per process for each --ctx, so "
                             "every context length trains the same tokens per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (default %(default)s; at least 1 with --compile, whose "
                             "compilation they absorb and report separately)")
    parser.add_argument("--time-budget", type=float, default=0.0, metavar="SECONDS",
                        help="per configuration: stop the warm-up and the timed steps once this many seconds "
                             "have passed since the model was built (at least one timed step runs; the row "
                             "records how many did; under torchrun one small all-reduce per step decides); "
                             "0 = no limit (default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block, its trainable ROSA "
                        "ops included (see --eager-rosa)")
    parser.add_argument("--rosa-overlap", action="store_true",
                        help="each ROSA block on a second CUDA stream beside its time-mix (RWKV8.overlap_rosa)")
    parser.add_argument("--eager-rosa", action="store_true",
                        help="with --compile, run the trainable ROSA ops eagerly between the compiled graphs "
                             "(one graph break around each; the default until the ninth session: docs/limits.md)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    parser.add_argument("--chunked-ce", type=int, nargs="?", const=4096, default=0, metavar="POSITIONS",
                        help="head + cross-entropy over POSITIONS positions at a time (default 4096 when given)")
    parser.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                        help="under torchrun: DDP or FSDP2 (default %(default)s)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the profiled steps of the time breakdown")
    parser.add_argument("--fresh-batches", action="store_true",
                        help="a new random batch every step (default: 4 batches in turn, which a model starts to "
                             "memorise within a few steps; the ROSA engine's cost depends on what the model has "
                             "learnt, docs/benchmarks/rosa.md); no batch-0 learning check then")
    parser.add_argument("--rosa-grouping-work", type=int, default=None, metavar="N",
                        help="set heron.ops.rosa.CUDA_GROUPING_WORK_PER_ELEMENT (0: the automaton kernel alone; "
                             "benchmarks/rosa_layer_streams.py compares values)")
    parser.add_argument("--profile-top", type=int, default=0, metavar="N",
                        help="with the breakdown: also print the N ops with the most device time per step")
    parser.add_argument("--baseline", type=Path, help="--json of a one-GPU run: print the scaling against it")
    parser.add_argument("--json", type=Path, help="write the results here (rank 0)")
    parser.add_argument("--tiny", action="store_true",
                        help="L2-D64, vocabulary 512, ctx 64: a CPU smoke run of every code path")
    parser.add_argument("--model", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override RWKV8Config fields of every configuration (after --tiny), e.g. "
                             "--model n_layer=4 rosa_tau=0.1")
    parser.add_argument("--device", default=None, help="default: this rank's GPU, else CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-curve", type=int, default=0, metavar="STEPS",
                        help="train RWKV-7 L6-D512 on the demo corpus for STEPS steps and write the losses")
    parser.add_argument("--csv", type=Path, default=None, help="--loss-curve output (default loss_curve_wN.csv)")
    args = parser.parse_args(argv)
    if args.ctx is None:
        args.ctx = [64] if args.tiny else [512]
    if args.batch is None:
        args.batch = 32 if args.loss_curve else (2 if args.tiny else 16)
    if args.tokens_per_step and (args.loss_curve or args.tokens_per_step < max(args.ctx)):
        parser.error("--tokens-per-step needs no --loss-curve and at least one sequence of the longest --ctx")
    if args.steps < 1 or args.warmup < 0 or args.time_budget < 0:
        parser.error("--steps must be >= 1, --warmup and --time-budget >= 0")
    if args.rosa_grouping_work is not None and args.rosa_grouping_work < 0:
        parser.error("--rosa-grouping-work must be >= 0")
    if args.eager_rosa and not args.compile:
        parser.error("--eager-rosa: only with --compile")
    if args.compile and args.warmup < 1:
        args.warmup = 1  # the compilation must happen in an untimed step
    try:
        args.model = dict(_parse_override(item) for item in args.model)
    except ValueError as exc:
        parser.error(str(exc))
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    return args


def _parse_override(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (``4``, ``0.1``, ``None``, ``'qkv4'``) or a bare word."""
    import ast

    key, sep, text = item.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"--model expects KEY=VALUE, got {item!r}")
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text


# ---------------------------------------------------------------------------------------------


def setup(args):
    from heron.train.distributed import resolve_device, setup_distributed

    device = resolve_device(args.device or "auto")
    context = setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, context


def model_config(name: str, args) -> dict:
    values = dict(CONFIGS[name])
    if args.tiny:
        values.update(TINY)
    values.update(args.model)
    return values


def matmul_parameters(model) -> int:
    """Every parameter except the lookup tables (token embedding, DeepEmbed ``enn``)."""
    lookup = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in lookup)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(event, name):
    return float(getattr(event, name, 0.0) or 0.0)


def _is_host_event(event) -> bool:
    """Host-side ops; a kernel (device event) is counted through the host op that launched it
    (whose device time includes it), never on its own: a kernel named like its op (``rosa``,
    ``wkv7``) would otherwise be counted twice."""
    from torch._C._autograd import DeviceType

    return getattr(event, "device_type", DeviceType.CPU) == DeviceType.CPU


def breakdown_from_profile(prof, steps: int) -> dict[str, float]:
    """Milliseconds per step per category (outermost matching host op: max of host and device time)."""
    totals = {label: 0.0 for label, _ in CATEGORIES}
    for event in prof.events():
        if not _is_host_event(event):
            continue
        name = event.name.lower()
        label = next((label for label, test in CATEGORIES if test(name)), None)
        if label is None:
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None:
            if next((lab for lab, test in CATEGORIES if test(parent.name.lower())), None) == label:
                nested = True
                break
            parent = parent.cpu_parent
        if nested:
            continue
        device_us = _time(event, "device_time_total" if hasattr(event, "device_time_total") else "cuda_time_total")
        totals[label] += max(_time(event, "cpu_time_total"), device_us)
    return {label: value / 1000.0 / steps for label, value in totals.items()}


CUDA_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def syncs_from_profile(prof, steps: int, cuda: bool) -> dict[str, float]:
    """Per step, on a GPU: ``cuda_syncs``, the CUDA synchronise calls (every ``item()`` of a CUDA
    tensor makes one), less the one the profiling loop makes at its end. On the CPU:
    ``value_reads``, the ``item()``/``tolist()``/``int(tensor)`` calls (of any tensor, so an upper
    bound on what would synchronise on a GPU; the optimiser's CPU step counters are among them)."""
    if cuda:
        calls = sum(1 for event in prof.events() if event.name in CUDA_SYNC_CALLS)
        return {"cuda_syncs": max(calls - 1, 0) / steps}
    reads = sum(1 for event in prof.events() if event.name == "aten::_local_scalar_dense")
    return {"value_reads": reads / steps}


def _label_wkv7() -> None:
    """Name the time-mix's WKV7 calls in the profile (the CUDA path's custom ops are named
    ``heron::wkv7_cuda_forward/backward`` anyway; the CPU path is plain PyTorch)."""
    from torch.profiler import record_function

    import heron.layers.time_mix as time_mix

    original = time_mix.wkv7
    if getattr(original, "_labelled", False):
        return

    def wkv7(*args, **kwargs):
        with record_function("wkv7"):
            return original(*args, **kwargs)

    wkv7._labelled = True
    time_mix.wkv7 = wkv7


def progress(context, text: str) -> None:
    """One progress line on rank 0, flushed at once (a run killed by a time limit keeps it)."""
    if context.is_main:
        print(text, flush=True)


def bench_config(name: str, ctx: int, args, device, context) -> dict:
    from heron.models.init import init_lm_recipe, make_lm_optimizer
    from heron.models.rwkv8 import RWKV8, RWKV8Config
    from heron.train.distributed import parallelize
    from heron.train.grad_health import GradNormMonitor
    from heron.train.losses import LossModel

    values = model_config(name, args)
    label = f"[{name} ctx {ctx}]"
    if args.breakdown:
        _label_wkv7()
    built = time.perf_counter()
    torch.manual_seed(args.seed)
    model = RWKV8(RWKV8Config(**values))
    init_lm_recipe(model)
    model.to(device)
    parameters = sum(p.numel() for p in model.parameters())
    flop_parameters = matmul_parameters(model)
    parallel = parallelize(model, LossModel(model, values["vocab_size"], "benchmark", args.chunked_ce), context,
                           device, parallel=args.parallel, grad_checkpointing=args.grad_checkpointing,
                           compile=args.compile, eager_rosa=args.eager_rosa,
                           rosa_overlap=args.rosa_overlap and values.get("rosa") is not None)  # ROSA rows only
    optimizer = make_lm_optimizer(model, 6e-4, 0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device="cpu").manual_seed(args.seed + 1000 * context.rank)
    B = args.tokens_per_step // ctx if args.tokens_per_step else args.batch
    T, V = ctx, values["vocab_size"]
    if args.fresh_batches:
        batches = []
        device_generator = torch.Generator(device=device).manual_seed(args.seed + 1000 * context.rank)

        def batch_at(index: int):
            rows = torch.randint(0, V, (B, T + 1), generator=device_generator, device=device)
            return rows[:, :-1], rows[:, 1:]
    else:
        batches = [torch.randint(0, V, (B, T + 1), generator=generator) for _ in range(4)]
        batches = [(b[:, :-1].to(device), b[:, 1:].to(device)) for b in batches]

        def batch_at(index: int):
            return batches[index % len(batches)]
    use_bf16 = device.type == "cuda"
    progress(context, f"{label} {parameters / 1e6:.1f}M parameters, batch {B} x {T} per process, built in "
                      f"{time.perf_counter() - built:.1f} s")
    # the clip's norm, watched without a per-step read-back: a non-finite or huge norm means the
    # step trained nothing (heron.train.grad_health) and the throughput is of a run that does not learn
    norms = GradNormMonitor(1.0)

    losses = []  # per step, on the device until the timing is over

    def step(index: int) -> torch.Tensor:
        x, y = batch_at(index)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = parallel.root(x, y)
        (loss / y.numel()).backward()
        norms.update(parallel.clip_grad_norm(trainable, 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        return losses[-1]

    def out_of_time() -> bool:
        """Past --time-budget on any rank (under torchrun every rank must stop at the same step:
        one small all-reduce decides, and only when a budget is set)."""
        if args.time_budget <= 0:
            return False
        return context.any_flag(time.perf_counter() - built > args.time_budget, device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # warm-up: untimed; its first step holds torch.compile's compilation (and the kernels' first
    # launches), reported apart as first_step_s against the later warm-up steps
    warmup_times = []
    for i in range(args.warmup):
        started = time.perf_counter()
        step(i)
        _sync(device)
        warmup_times.append(time.perf_counter() - started)
        progress(context, f"{label} warm-up step {i + 1}/{args.warmup}: {warmup_times[-1]:.2f} s"
                          + (" (includes compilation)" if args.compile and i == 0 else ""))
        if out_of_time() and i >= (1 if args.compile else 0):
            progress(context, f"{label} --time-budget {args.time_budget:g} s reached in the warm-up")
            break
    context.barrier()
    started = time.perf_counter()
    timed = 0
    report_every = max(1, args.steps // 5)
    # Per-step times from events on the stream, read after the loop (no per-step host sync):
    # a ROSA model's steps vary with what it has learnt, so the spread is worth seeing.
    step_events = [torch.cuda.Event(enable_timing=True)] if device.type == "cuda" else []
    for event in step_events:
        event.record()
    while timed < args.steps:
        step(len(warmup_times) + timed)
        timed += 1
        if step_events:
            step_events.append(torch.cuda.Event(enable_timing=True))
            step_events[-1].record()
        if timed % report_every == 0 or timed == args.steps:
            _sync(device)  # at most 5 such waits per timing: < 1 ms each against steps of 100+ ms
            progress(context, f"{label} timed step {timed}/{args.steps}: {time.perf_counter() - started:.2f} s so far")
        if out_of_time():
            progress(context, f"{label} --time-budget {args.time_budget:g} s reached after {timed} timed step(s)")
            break
    _sync(device)
    step_s = (time.perf_counter() - started) / timed
    step_ms_each = [first.elapsed_time(second) for first, second in zip(step_events, step_events[1:])]
    step_s = float(context_max(context, step_s, device))
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process RSS
    peak_mb = float(context_max(context, peak_mb, device))
    tokens_per_s = context.world_size * B * T / step_s
    nonfinite, largest_norm = norms.values()
    per_token = [value / (B * T) for value in torch.stack(losses).tolist()]
    # the 4 batches repeat: batch 0 at step 1 and at its last visit (steps 5, 9, ...) tells whether
    # the weights moved; a configuration that trains memorises it within a few visits
    last_visit = (len(per_token) - 1) // len(batches) * len(batches) if batches else None
    row = {
        "config": name, "model": values, "ctx": T, "batch_per_process": B, "processes": context.world_size,
        "parallel": args.parallel if context.enabled else "single", "compile": args.compile,
        "eager_rosa": args.eager_rosa, "rosa_overlap": args.rosa_overlap,
        # DDP decides it from the model (heron.train.distributed.may_leave_parameters_unused)
        "find_unused_parameters": getattr(parallel.root, "find_unused_parameters", None),
        "grad_checkpointing": args.grad_checkpointing, "chunked_ce": args.chunked_ce,
        "parameters": parameters, "matmul_parameters": flop_parameters, "device": device_name(device),
        "step_ms": step_s * 1000, "tokens_per_s": tokens_per_s, "peak_memory_mb_per_process": peak_mb,
        "timed_steps": timed, "warmup_steps": len(warmup_times),
        "step_ms_each": step_ms_each, "step_ms_median": statistics.median(step_ms_each) if step_ms_each else None,
        "first_step_s": warmup_times[0] if warmup_times else None,
        "loss": per_token[-1], "losses": per_token,
        "fresh_batches": args.fresh_batches,
        "loss_batch0_first": per_token[0] if batches else None,
        "loss_batch0_last": per_token[last_visit] if batches else None,
        "batch0_last_step": last_visit + 1 if batches else None,
        "grad_norm_max": largest_norm, "nonfinite_grad_norm_steps": nonfinite,
    }
    if args.compile and len(warmup_times) >= 2:
        # the first step less a later (compiled) one: the compilation, not counted in the timing
        row["compile_s"] = max(warmup_times[0] - min(warmup_times[1:]), 0.0)
    elif args.compile and warmup_times:
        row["compile_s"] = max(warmup_times[0] - step_s, 0.0)
    if device.type == "cuda":
        row["mfu"] = 6 * flop_parameters * tokens_per_s / (H100_BF16_PEAK * context.world_size)
    if args.breakdown and not out_of_time():
        row["breakdown_ms"], syncs = profile_breakdown(step, args, device, context)
        if isinstance(row["breakdown_ms"], dict):
            row["breakdown_ms"]["rest"] = row["step_ms"] - sum(row["breakdown_ms"].values())
        if syncs is not None:
            row["syncs_per_step"] = syncs
    return row  # the model, optimiser and batches go with this frame (main() then empties the cache)


def profile_breakdown(step, args, device, context, steps: int = 2):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        if context.is_main:
            with profile(activities=activities) as prof:
                for i in range(steps):
                    step(i)
                _sync(device)
            if args.profile_top > 0:
                print_top_ops(prof, steps, args.profile_top, device.type == "cuda")
            return breakdown_from_profile(prof, steps), syncs_from_profile(prof, steps, device.type == "cuda")
        for i in range(steps):
            step(i)
        _sync(device)
        return None, None
    except Exception as exc:  # the breakdown is a diagnostic: never lose the throughput figures
        return f"profiler failed: {type(exc).__name__}: {exc}", None


def print_top_ops(prof, steps: int, count: int, cuda: bool) -> None:
    """The ``count`` ops (kernels on a GPU) with the most self device time, per step."""
    def self_time(event) -> float:
        if cuda:
            return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))
        return event.self_cpu_time_total

    averages = prof.key_averages()
    events = sorted(averages, key=self_time, reverse=True)[:count]
    total = sum(self_time(e) for e in averages)
    print(f"    top {count} ops by self {'device' if cuda else 'CPU'} time per step "
          f"(all ops: {total / 1e3 / steps:.1f} ms per step):", flush=True)
    for event in events:
        print(f"      {self_time(event) / 1e3 / steps:8.2f} ms  {event.count // steps:6d} calls  {event.key[:110]}",
              flush=True)


def context_max(context, value: float, device) -> float:
    if not context.enabled:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _fmt_tokens(value: float) -> str:
    return f"{value / 1000:.1f}k"


def report_row(row: dict, by_key: dict, baseline: dict | None) -> None:
    """Print one configuration's figures (``by_key``: the rows so far, for the RWKV-7 ratio)."""
    from heron.train.grad_health import HUGE_NORM_RATIO  # the benchmark clips at 1.0
    line = (f"{row['config']:<16} ctx {row['ctx']:>5} B {row['batch_per_process']}x{row['processes']} "
            f"({row['parallel']}{', ROSA overlapped' if row.get('rosa_overlap') and 'rosa' in row['config'] else ''}): "
            f"{_fmt_tokens(row['tokens_per_s'])} tokens/s, step {row['step_ms']:.1f} ms, "
            f"peak {row['peak_memory_mb_per_process']:.0f} MiB/process")
    if "mfu" in row:
        line += f", MFU {100 * row['mfu']:.1f}%"
    if row.get("timed_steps") is not None:
        line += f", {row['timed_steps']} timed step(s)"
    print(line)
    if row.get("step_ms_each") and len(row["step_ms_each"]) > 1:
        each = row["step_ms_each"]
        median_tokens = row["batch_per_process"] * row["ctx"] * row["processes"] / (row["step_ms_median"] / 1000)
        print(f"    per step (GPU stream): median {row['step_ms_median']:.1f} ms = {_fmt_tokens(median_tokens)} tokens/s, "
              f"min {min(each):.1f}, max {max(each):.1f}; " + " ".join(f"{value:.0f}" for value in each))
    if row.get("compile_s") is not None:
        print(f"    compilation (first warm-up step less a compiled one, not timed): {row['compile_s']:.1f} s")
    parts = row.get("breakdown_ms")
    if isinstance(parts, dict):
        print("    breakdown per step: " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()))
    elif parts:
        print(f"    breakdown: {parts}")
    syncs = row.get("syncs_per_step")
    if syncs and "cuda_syncs" in syncs:
        print(f"    host-device syncs per step: {syncs['cuda_syncs']:g} CUDA synchronise calls")
    elif syncs:
        print(f"    tensor values read by the host per step: {syncs['value_reads']:g} (any device)")
    if row.get("loss_batch0_first") is not None:
        # the 4 batches repeat: a configuration that trains at all brings batch 0's loss down by its
        # next visits; an unchanged loss means updates of zero (see the gradient-norm figures)
        print(f"    training loss on batch 0: {row['loss_batch0_first']:.4f} at step 1 -> "
              f"{row['loss_batch0_last']:.4f} at step {row['batch0_last_step']}; clip norm max "
              f"{row['grad_norm_max']:.3g}, not finite at {row['nonfinite_grad_norm_steps']} step(s)")
        if row["nonfinite_grad_norm_steps"] or row["grad_norm_max"] > HUGE_NORM_RATIO:
            print("    WARNING: gradient norm non-finite or huge: these steps trained nothing "
                  "(docs/estimators.md, 'Deep models')")
    targets = []
    if row["config"] == "rwkv7" and row["processes"] == 1:
        ratio = row["tokens_per_s"] / TARGET_RWKV7_TOKENS_PER_S
        targets.append(f"target >= {_fmt_tokens(TARGET_RWKV7_TOKENS_PER_S)} tokens/s on one H100 at ctx 512 "
                       f"bf16: ratio {ratio:.2f}")
    if row["config"].startswith("rwkv8-rosa") and ("rwkv7", row["ctx"]) in by_key:
        ratio = row["tokens_per_s"] / by_key[("rwkv7", row["ctx"])]["tokens_per_s"]
        targets.append(f"target >= {TARGET_ROSA_FRACTION}x RWKV-7: {ratio:.2f}x")
    if baseline and row["processes"] > 1:
        base = baseline.get((row["config"], row["ctx"]))
        if base:
            scaling = row["tokens_per_s"] / base["tokens_per_s"]
            target = TARGET_SCALING.get(row["processes"], 0.85 * row["processes"])
            row["scaling"] = scaling
            targets.append(f"scaling {scaling:.2f}x one GPU (target >= {target}x for {row['processes']} GPUs)")
    for text in targets:
        print("    " + text)
    sys.stdout.flush()


MFU_NOTE = ("MFU = 6 * matmul parameters (all but the embedding/DeepEmbed tables) * tokens/s / "
            "(989 TFLOP/s bf16 * GPUs); WKV/ROSA work not counted")


def report(rows: list[dict], args, baseline: dict | None) -> None:
    by_key = {(r["config"], r["ctx"]): r for r in rows}
    for row in rows:
        report_row(row, by_key, baseline)
    print(MFU_NOTE)


def load_baseline(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"baseline {path} unreadable: {exc}")
        return None
    return {(r["config"], r["ctx"]): r for r in data.get("results", [])}


# ---------------------------------------------------------------------------------------------


def loss_curve(args, context) -> int:
    """RWKV-7 (L6-D512; L2-D64 with --tiny) trained by the real trainer on the demo corpus."""
    import tempfile

    from heron.train.config import TrainConfig
    from heron.train.tasks import get_task
    from heron.train.trainer import train

    model = dict(LOSS_CURVE_MODEL, **({k: v for k, v in TINY.items() if k != "vocab_size"} if args.tiny else {}))
    tokenizer = "bytes" if args.tiny else "world"
    out = Path(tempfile.mkdtemp(prefix="heron-loss-curve-")) if context.is_main else Path(tempfile.gettempdir())
    # every rank must write to the same place: rank 0's directory is the one that gets files
    if context.enabled:
        import torch.distributed as dist

        holder = [str(out)]
        dist.broadcast_object_list(holder, src=0)
        out = Path(holder[0]) / "run"
    else:
        out = out / "run"
    config = TrainConfig.from_dict({
        **get_task("text").defaults, "task": "text", "out": str(out), "steps": args.loss_curve,
        "batch_size": args.batch, "warmup": min(20, args.loss_curve // 10), "eval_every": 0, "log_every": 1,
        "progress": False, "tensorboard": False, "seed": args.seed, "model_config": model,
        "task_options": {"tokenizer": tokenizer, "seq_len": args.ctx[0], "eval_batches": 1},
        "parallel": args.parallel, "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
        "ce_chunk": args.chunked_ce, **({"device": args.device} if args.device else {}),
    })
    started = time.perf_counter()
    result = train(config)
    elapsed = time.perf_counter() - started
    if context.is_main:
        csv = args.csv or Path(f"loss_curve_w{context.world_size}.csv")
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("step,loss\n" + "".join(f"{i + 1},{loss:.6f}\n" for i, loss in enumerate(result.losses)))
        print(f"loss curve: {len(result.losses)} steps of {args.batch} x {args.ctx[0]} tokens on "
              f"{context.world_size} process(es), final loss {result.loss:.4f}, {elapsed:.0f} s -> {csv}")
        if args.json:
            args.json.write_text(json.dumps({"mode": "loss_curve", "processes": context.world_size,
                                             "losses": result.losses, "seconds": elapsed,
                                             "metrics": result.metrics}, indent=1))
    return 0


def header(device, context, args) -> str:
    return (f"heron train-step benchmark on {device_name(device)} x {context.world_size}, "
            f"torch {torch.__version__}{', compiled' if args.compile else ''}"
            f"{' (the ROSA ops eager)' if args.eager_rosa else ''}"
            f"{', grad checkpointing' if args.grad_checkpointing else ''}"
            f"{f', chunked CE {args.chunked_ce}' if args.chunked_ce else ''}"
            + (f", ROSA grouping work per element {args.rosa_grouping_work}"
               if args.rosa_grouping_work is not None else "")
            + (", a fresh random batch every step" if args.fresh_batches else ", 4 random batches in turn"))


def write_json(args, context, rows) -> None:
    if args.json and context.is_main:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": "throughput", "processes": context.world_size,
                                         "torch": torch.__version__, "results": rows}, indent=1))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rosa_grouping_work is not None:
        import heron.ops.rosa  # noqa: F401  (the module, not the function heron.ops re-exports)

        sys.modules["heron.ops.rosa"].CUDA_GROUPING_WORK_PER_ELEMENT = args.rosa_grouping_work
    device, context = setup(args)
    try:
        if args.loss_curve:
            return loss_curve(args, context)
        baseline = load_baseline(args.baseline)
        progress(context, header(device, context, args))
        rows = []
        for ctx in args.ctx:
            for name in args.configs:
                started = time.perf_counter()
                try:
                    rows.append(bench_config(name, ctx, args, device, context))
                except Exception as exc:  # one failing configuration must not lose the others
                    if context.enabled:
                        raise
                    print(f"{name} ctx {ctx}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    rows.append({"config": name, "ctx": ctx, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                finally:
                    if device.type == "cuda":  # the finished configuration's memory, for the next one
                        gc.collect()
                        torch.cuda.empty_cache()
                # each configuration's figures as soon as they exist, and the JSON rewritten, so a
                # run stopped by a time limit keeps everything finished before it
                if context.is_main:
                    report_row(rows[-1], {(r["config"], r["ctx"]): r for r in rows if "error" not in r}, baseline)
                    print(f"    ({time.perf_counter() - started:.0f} s for this configuration)", flush=True)
                write_json(args, context, rows)
        if context.is_main:
            good = [r for r in rows if "error" not in r]
            print("summary: " + header(device, context, args))
            report(good, args, baseline)
            write_json(args, context, rows)
        return 0 if all("error" not in r for r in rows) else 1
    finally:
        context.close()


if __name__ == "__main__":
    sys.exit(main())
