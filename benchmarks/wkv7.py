"""WKV7 benchmark: Heron's kernels on the shapes of ANCHORS.md (+ T = 512 and head size 16),
forward and forward+backward, bf16 in/out, medians of ``triton.testing.do_bench``; fla's
``chunk_rwkv7`` is measured in the same run when it is installed (it is optional).

    python benchmarks/wkv7.py               # GPU table (needs CUDA)
    python benchmarks/wkv7.py --cpu         # CPU: chunked PyTorch vs the per-step loop
    python benchmarks/wkv7.py --json out.json
    python benchmarks/wkv7.py --split-sweep # the split backward's passes alone, chunk lengths and warps

The anchors (H100, from ANCHORS.md) are printed beside the figures for reference; only fla is
re-measured here, so ratios against the BlinkDL anchors compare against figures measured on the
project's H100 in an earlier run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heron.ops.wkv7 import cuda as wkv7_cuda  # noqa: E402
from heron.ops.wkv7 import split_backward  # noqa: E402
from heron.ops.wkv7 import w_to_fla_log_decay, wkv7, wkv7_chunked, wkv7_reference  # noqa: E402
from heron.ops.wkv7.inputs import random_inputs  # noqa: E402

# (B, T, H, N): anchor fwd+bwd in ms (best of BlinkDL v3 / fla from ANCHORS.md) or None.
GPU_SHAPES = [
    ((8, 4096, 32, 64), {"blinkdl_v3": (2.50, 8.38), "fla_chunk_safe": (3.64, 12.93)}),
    ((32, 1024, 12, 64), {"blinkdl_v3": (0.82, 3.16), "fla_chunk_safe": (1.39, 5.01)}),
    ((4, 16384, 32, 64), {"blinkdl_v3": (8.48, 29.31), "fla_chunk_safe": (7.26, 25.91)}),
    ((8, 512, 32, 64), {}),
    ((8, 4096, 128, 16), {}),
]


VARIANT_SETTINGS = ("FORWARD_ROWS_PER_THREAD", "BACKWARD_COLUMNS_PER_THREAD", "BACKSTEP_MAX_LOG_GROWTH",
                    "BACKWARD", "STATE_GRADIENT_ROWS_PER_THREAD", "CHUNK_GRADIENT_WARPS", "SPLIT_CHUNK_LENGTH")
# fwd+bwd of other kernel settings, timed beside the defaults (labels name what differs).
VARIANTS = {
    "sequential backward": {"BACKWARD": "sequential"},
    "2 rows per lane group (forward, pass 1)": {"FORWARD_ROWS_PER_THREAD": 2, "STATE_GRADIENT_ROWS_PER_THREAD": 2},
    "split, 64-step chunks, 8 warps": {"SPLIT_CHUNK_LENGTH": 64, "CHUNK_GRADIENT_WARPS": 8},
    "split, 16-step chunks": {"SPLIT_CHUNK_LENGTH": 16},  # head size 128 only (two 8-step segments)
}


# fla's chunk_rwkv7 settings timed in the same run when fla imports: its default, and the one
# ANCHORS.md's best fla figures used (64-step chunks with the gate taken as safe, which the
# model's log-decays in (-e^-0.5, 0) are).
FLA_SETTINGS = {"default": {}, "chunk 64, safe gate": {"safe_gate": True, "chunk_size": 64}}


def make_inputs(B, T, H, N, dtype, device, seed=0):
    return list(random_inputs(B, T, H, N, dtype=dtype, device=device, seed=seed, with_state=False,
                              draw_on_device=True)[:6])


def _load_fla():
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception as exc:  # not installed, or broken for this torch/triton
        return None, f"{type(exc).__name__}: {exc}"
    return chunk_rwkv7, None


def bench_gpu(args):
    import triton.testing

    device = torch.device("cuda")
    # `--fla-settings` alone: fla is not imported, timed, or reported as measured
    chunk_rwkv7, fla_error = _load_fla() if args.fla_settings else (None, "no --fla-settings")
    rows = []
    anchors_of = dict(GPU_SHAPES)
    shapes = [(tuple(shape), anchors_of.get(tuple(shape), {})) for shape in args.shape] if args.shape else GPU_SHAPES
    variants = {label: VARIANTS[label] for label in args.variants}
    for (B, T, H, N), anchors in shapes:
        if args.quick and T * B > 40000:
            continue
        inputs = make_inputs(B, T, H, N, torch.bfloat16, device)
        leaves = [x.clone().requires_grad_() for x in inputs]
        grad_y = torch.randn_like(inputs[0])

        def heron_forward():
            with torch.no_grad():
                return wkv7(*inputs, backend="cuda")

        def heron_forward_backward():
            y = wkv7(*leaves, backend="cuda")
            y.backward(grad_y)

        row = {"shape": (B, T, H, N), "dtype": "bf16", "anchors": anchors}
        row["heron_fwd_ms"] = triton.testing.do_bench(heron_forward, return_mode="median")
        row["heron_fwdbwd_ms"] = triton.testing.do_bench(
            heron_forward_backward, grad_to_none=leaves, return_mode="median"
        )
        # The kernels' other layouts and rules on the same inputs (module settings of
        # heron.ops.wkv7.cuda: forward rows / backward columns per lane group, and the bound under
        # which the backward steps back by dividing by the decay; 0 = always recompute).
        row["variants_ms"] = {}  # label: (fwd, fwd+bwd)
        defaults = {name: getattr(wkv7_cuda, name) for name in VARIANT_SETTINGS}
        try:
            for label, settings in variants.items():
                for name, value in settings.items():
                    setattr(wkv7_cuda, name, value)
                try:
                    row["variants_ms"][label] = (
                        triton.testing.do_bench(heron_forward, return_mode="median"),
                        triton.testing.do_bench(heron_forward_backward, grad_to_none=leaves, return_mode="median"),
                    )
                except ValueError:  # a setting this head size does not take (SPLIT_CHUNK_LENGTH)
                    pass
                for name, value in defaults.items():
                    setattr(wkv7_cuda, name, value)
        finally:
            for name, value in defaults.items():
                setattr(wkv7_cuda, name, value)
        if split_backward.triton_available():
            row["split_passes_ms"] = _split_pass_times(inputs, grad_y)
        state = torch.zeros(B, H, N, N, device=device, requires_grad=True)

        def heron_state_forward_backward():
            y, s = wkv7(*leaves, state, return_state=True, backend="cuda")
            torch.autograd.backward((y, s), (grad_y, torch.ones_like(s)))

        row["heron_state_fwdbwd_ms"] = triton.testing.do_bench(
            heron_state_forward_backward, grad_to_none=leaves + [state], return_mode="median"
        )
        if chunk_rwkv7 is not None:
            # fla's first calls autotune for minutes: Heron's figures are shown before they start
            print(f"{row['shape']}: heron fwd {row['heron_fwd_ms']:.3f} ms, fwd+bwd {row['heron_fwdbwd_ms']:.3f} ms; "
                  "timing fla...", file=sys.stderr, flush=True)
            r, w, k, v, a, b = inputs
            log_decay = w_to_fla_log_decay(w.float()).to(w.dtype)
            fla_leaves = [x.clone().requires_grad_() for x in (r, log_decay, k, v, a, b)]

            row["fla_ms"] = {}  # label: (fwd, fwd+bwd), or why it failed
            for label in args.fla_settings:
                options = FLA_SETTINGS[label]

                def fla_forward():
                    with torch.no_grad():
                        return chunk_rwkv7(r, log_decay, k, v, a, b, scale=1.0, **options)[0]

                def fla_forward_backward():
                    o = chunk_rwkv7(*fla_leaves, scale=1.0, **options)[0]
                    o.backward(grad_y)

                try:
                    row["fla_ms"][label] = (
                        triton.testing.do_bench(fla_forward, return_mode="median"),
                        triton.testing.do_bench(fla_forward_backward, grad_to_none=fla_leaves, return_mode="median"),
                    )
                except Exception as exc:  # a setting this fla version does not take: reported, not fatal
                    row["fla_ms"][label] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
        print(_format_row(row), flush=True)
        torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "fla": "measured" if chunk_rwkv7 is not None else f"not measured ({fla_error})",
        "rows": rows,
    }


def _split_saved(inputs, grad_y, chunk):
    """What the split backward's pass 2 reads, from one forward saving a state every ``chunk`` steps
    and pass 1 on it (bf16 CUDA inputs), and pass 1 itself as a callable, for timing."""
    stride = chunk // wkv7_cuda.segment_length(inputs[0].shape[-1])
    _, _, removal, checkpoints = wkv7_cuda.cuda_forward(*inputs, None, True, wkv7_cuda.FORWARD_ROWS_PER_THREAD, stride)

    def pass1():
        return wkv7_cuda.cuda_state_gradients(*inputs[:3], *inputs[4:], grad_y, None,
                                              wkv7_cuda.STATE_GRADIENT_ROWS_PER_THREAD, stride)

    grad_b_dot, _, future_grads, _ = pass1()
    return (*inputs, grad_y, removal, grad_b_dot, checkpoints, future_grads), pass1


def _split_pass_times(inputs, grad_y):
    """The split backward's two passes timed alone on the saved tensors of one forward."""
    import triton.testing

    N = inputs[0].shape[-1]
    chunk = wkv7_cuda.split_checkpoint_stride(N, inputs[0].dtype) * wkv7_cuda.segment_length(N)
    saved, pass1 = _split_saved(inputs, grad_y, chunk)
    return {
        "pass 1 (CUDA, sequential)": triton.testing.do_bench(pass1, return_mode="median"),
        "pass 2 (Triton, chunks)": triton.testing.do_bench(lambda: wkv7_cuda.chunk_gradients(
            *saved, chunk, wkv7_cuda.CHUNK_GRADIENT_WARPS), return_mode="median"),
    }


SWEEP_SHAPES = [(8, 4096, 32, 64), (32, 1024, 12, 64), (4, 16384, 32, 64)]
SWEEP_CHUNKS = (32, 64)
SWEEP_WARPS = (4, 8)  # warps per program of the Triton pass


def split_sweep(args):
    """The split backward's parts at the anchor shapes, bf16: the forward saving a state every
    chunk, pass 1, and pass 2 with each of SWEEP_WARPS (its gradients checked against the first's);
    the sum is what the split scheme's fwd+bwd would cost at best. Under a profiler the first
    pass 2 launch is the default one at (8, 4096, 32):

        ncu -k regex:stacked --launch-count 1 --section SpeedOfLight --section Occupancy \\
            --section WarpStateStats python benchmarks/wkv7.py --split-sweep --shape 8 4096 32 64 --chunks 32
    """
    import triton.testing

    def bench(fn):
        return triton.testing.do_bench(fn, return_mode="median")

    rows = []
    for B, T, H, N in [tuple(shape) for shape in args.shape] if args.shape else SWEEP_SHAPES:
        inputs = make_inputs(B, T, H, N, torch.bfloat16, torch.device("cuda"))
        grad_y = torch.randn_like(inputs[0])
        for chunk in args.chunks or SWEEP_CHUNKS:
            stride = chunk // wkv7_cuda.segment_length(N)
            rows_per_thread = wkv7_cuda.FORWARD_ROWS_PER_THREAD
            forward_ms = bench(lambda: wkv7_cuda.cuda_forward(*inputs, None, True, rows_per_thread, stride))
            saved, pass1 = _split_saved(inputs, grad_y, chunk)
            pass1_ms = bench(pass1)
            reference = None
            for warps in SWEEP_WARPS:
                def pass2():
                    return split_backward.chunk_gradients_triton(*saved, chunk, num_warps=warps)
                row = {"shape": (B, T, H, N), "chunk": chunk, "warps": warps,
                       "forward_ms": forward_ms, "pass1_ms": pass1_ms}
                try:
                    grads = pass2()
                    row["pass2_ms"] = bench(pass2)
                except Exception as exc:  # a build that fails: reported, not fatal
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    print(f"{row['shape']} chunk {chunk} {warps} warps: {row['error']}", flush=True)
                    rows.append(row)
                    continue
                if reference is None:
                    reference = grads
                row["max_relative_difference"] = max(
                    (torch.linalg.vector_norm((g - e).float()) / torch.linalg.vector_norm(e.float())).item()
                    for g, e in zip(grads, reference))
                row["total_ms"] = forward_ms + pass1_ms + row["pass2_ms"]
                rows.append(row)
                print(f"{row['shape']} chunk {chunk} {warps} warps: fwd {forward_ms:.3f} + pass 1 {pass1_ms:.3f} "
                      f"+ pass 2 {row['pass2_ms']:.3f} = {row['total_ms']:.3f} ms "
                      f"(vs {SWEEP_WARPS[0]} warps {row['max_relative_difference']:.1e})", flush=True)
            torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "rows": rows}


def _format_row(row):
    text = (
        f"{row['shape']} {row['dtype']}: heron fwd {row['heron_fwd_ms']:.3f} ms, "
        f"fwd+bwd {row['heron_fwdbwd_ms']:.3f} ms (with state in/out {row['heron_state_fwdbwd_ms']:.3f}); "
        + "; ".join(f"{label}: {fwd:.3f} / {fwdbwd:.3f}" for label, (fwd, fwdbwd) in row["variants_ms"].items())
    )
    for label, ms in row.get("split_passes_ms", {}).items():
        text += f"; {label} {ms:.3f}"
    for label, measured in row.get("fla_ms", {}).items():
        if isinstance(measured, str):
            text += f"; fla {label}: failed ({measured})"
        else:
            text += (f"; fla {label} (same run): {measured[0]:.3f} / {measured[1]:.3f} "
                     f"(x{measured[1] / row['heron_fwdbwd_ms']:.2f})")
    for name, (fwd, fwdbwd) in row["anchors"].items():
        text += f"; anchor {name} {fwd}/{fwdbwd} (x{fwdbwd / row['heron_fwdbwd_ms']:.2f})"
    return text


def _best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_cpu(args):
    results = {"threads": torch.get_num_threads(), "rows": []}
    shapes = [(4, 1024, 4, 64), (600, 128, 2, 16), (32, 128, 2, 16)]
    for B, T, H, N in shapes:
        inputs = make_inputs(B, T, H, N, torch.float32, torch.device("cpu"))
        # Interleaved best-of timings, so that both paths see the same load on a shared machine.
        chunked, loop = float("inf"), float("inf")
        with torch.no_grad():
            for _ in range(3):
                chunked = min(chunked, _best_of(lambda: wkv7_chunked(*inputs), 3))
                loop = min(loop, _best_of(lambda: wkv7_reference(*inputs), 1))
        leaves = [x.clone().requires_grad_() for x in inputs]

        def train_step(fn):
            y, s = fn(*leaves)
            (y.square().sum() + s.sum()).backward()

        chunked_train = _best_of(lambda: train_step(wkv7_chunked), 5)
        loop_train = _best_of(lambda: train_step(wkv7_reference), 1)
        row = {
            "shape": (B, T, H, N),
            "chunked_fwd_s": chunked,
            "loop_fwd_s": loop,
            "fwd_speedup": loop / chunked,
            "chunked_fwdbwd_s": chunked_train,
            "loop_fwdbwd_s": loop_train,
            "fwdbwd_speedup": loop_train / chunked_train,
        }
        results["rows"].append(row)
        print(
            f"CPU {row['shape']} fp32, {results['threads']} thread(s): chunked fwd {chunked * 1e3:.1f} ms vs "
            f"step loop {loop * 1e3:.1f} ms (x{row['fwd_speedup']:.1f}); fwd+bwd {chunked_train * 1e3:.1f} ms "
            f"vs {loop_train * 1e3:.1f} ms (x{row['fwdbwd_speedup']:.1f})",
            flush=True,
        )
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU benchmark (chunked vs step loop)")
    parser.add_argument("--quick", action="store_true", help="skip the largest GPU shapes")
    parser.add_argument("--split-sweep", action="store_true",
                        help="time the split backward's passes alone, for several chunk lengths and warps")
    parser.add_argument("--shape", type=int, nargs=4, action="append", metavar=("B", "T", "H", "N"),
                        help="GPU shape(s) to time instead of the built-in ones (repeatable)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS), metavar="LABEL",
                        help="the kernel settings to time beside the defaults (default: all of "
                             + ", ".join(repr(label) for label in VARIANTS) + "; none: --variants alone)")
    parser.add_argument("--fla-settings", nargs="*", choices=list(FLA_SETTINGS), default=list(FLA_SETTINGS),
                        metavar="LABEL",
                        help="fla's settings to time when fla imports (default: all of "
                             + ", ".join(repr(label) for label in FLA_SETTINGS) + ")")
    parser.add_argument("--chunks", type=int, nargs="+", help="--split-sweep: chunk lengths (default 32 64)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.cpu:
        results = bench_cpu(args)
    else:
        if not torch.cuda.is_available():
            parser.error("the GPU benchmark needs a CUDA device (use --cpu for the CPU benchmark)")
        results = split_sweep(args) if args.split_sweep else bench_gpu(args)
        print(f"device: {results['device']}; fla: {results.get('fla', 'not measured')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
