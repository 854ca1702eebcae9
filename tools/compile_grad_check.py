"""Compare the gradients of a compiled RWKV-8 (+ROSA) model with eager ones, parameter by parameter.

The GPU test ``tests/train/test_compiled_rosa_blocks_on_gpu`` only reports the first parameter that
differs; this prints, per configuration, the forward difference and the worst parameters of the
compiled gradients against eager on the same device, and of eager on the device against eager on
the CPU. It found (seventh session, H100) that with a ROSA-QKV block the compiled graph's
gradients of the earlier block's parameters are ~100% off while the logits agree to 1e-15,
in float32 and float64, with and without the gain bound; without ROSA they agree to 1e-15.
The eighth session's bisect (``--backend aot_eager``, ``--wkv-backend``, ``--rosa-engine``,
``--layer``, ``--trace``) showed the ROSA Function receiving an all-zero incoming gradient, and
the same run on the CPU under torch 2.11 (the GPU hosts' version; 2.13 is fine) reproduced it:
torch 2.11 loses the gradient of an autograd.Function whose forward returns ``out.to(out.dtype)``.
Fixed by ``heron.ops.rosa.grad._as_dtype``; confirmed on an H100 in the ninth session (the full
Inductor compile, float32: every gradient within 4.1e-6 of eager).

    PYTHONPATH=. python tools/compile_grad_check.py --device cuda --dtype float32 --rosa qkv1 none
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from heron.models.init import init_lm_recipe, perturb_zeroed_outputs_
from heron.models.rwkv8 import RWKV8, RWKV8Config
from heron.train.distributed import apply_compile


def build(rosa: str | None, dtype: torch.dtype, max_gain: float | None, deep_embed: bool = True) -> RWKV8:
    config = dict(n_layer=2, n_embd=256, vocab_size=1024, head_size=64, rosa=rosa, deep_embed=deep_embed,
                  rosa_estimator="value", rosa_qk_init="tied", rosa_max_gain=max_gain, rosa_tau=0.1)
    torch.manual_seed(0)
    model = RWKV8(RWKV8Config(**config))
    perturb_zeroed_outputs_(init_lm_recipe(model))
    return model.to(dtype=dtype)


def trace_value_estimator() -> None:
    """Print what the value estimator's input-gradient op receives and returns on every call (the op
    body runs on real tensors, eager or compiled), to compare an eager backward with a compiled one."""
    import heron.ops.rosa.grad as rosa_grad

    def stats(name, t):
        t = t.detach()
        if t.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
            return f"{name} {tuple(t.shape)} {tuple(t.stride())} sum={int(t.long().sum())} neg={int((t < 0).sum())}"
        return f"{name} {tuple(t.shape)} {tuple(t.stride())} |.|={t.double().norm().item():.6e}"

    original_deltas, original_finish = rosa_grad.value_deltas, rosa_grad._finish

    def value_deltas(retrieved, values, val, bits):
        out = original_deltas(retrieved, values, val, bits)
        print("  value_deltas:", ", ".join(stats(n, t) for n, t in
                                           (("retrieved", retrieved), ("values", values), ("val", val), ("out", out))))
        return out

    def finish(delta, x, tau):
        out = original_finish(delta, x, tau)
        print("  finish:", ", ".join(stats(n, t) for n, t in (("delta", delta), ("x", x), ("out", out))))
        return out

    original_bound = rosa_grad._bound_gain

    def bound_gain(grads, grad_out, max_gain):
        out = original_bound(grads, grad_out, max_gain)
        print("  bound_gain:", ", ".join(stats(n, t) for n, t in (("grad_out", grad_out), ("out", out[0]))))
        return out

    rosa_grad.value_deltas, rosa_grad._finish, rosa_grad._bound_gain = value_deltas, finish, bound_gain


def layer_check(device: str, backend: str, dtype: torch.dtype, only_first: bool = False) -> bool:
    """One ROSA-QKV block (``heron.layers.ROSAQKV``) behind a LayerNorm, alone: the compiled
    gradients of its input and parameters against eager, for each estimator, key init and width.
    Prints one line per variant; returns whether every variant agreed within 1e-4."""
    from heron.layers.rosa import ROSAQKV

    ok = True
    for estimator in ("value", "flip"):
        for qk_init in ("tied", "shared"):
            for bits in (1, 4):
                torch.manual_seed(0)
                layer = torch.nn.Sequential(torch.nn.LayerNorm(64), ROSAQKV(
                    64, bits, estimator=estimator, tau=0.1, qk_init=qk_init, max_gain=1.0)).to(device, dtype)
                x = torch.randn(2, 128, 64, device=device, dtype=dtype)
                weight = torch.randn(2, 128, 64, device=device, dtype=dtype)
                results = []
                for module in (layer, torch.compile(copy.deepcopy(layer), backend=backend)):
                    if only_first:
                        print("eager" if module is layer else "compiled", flush=True)
                    xs = x.clone().requires_grad_(True)
                    out = module(xs)
                    (out * weight).sum().backward()
                    grads = {"input": xs.grad.detach().cpu()}
                    grads.update({n: p.grad.detach().cpu() for n, p in module.named_parameters() if p.grad is not None})
                    results.append((out.detach().cpu(), {n.replace("_orig_mod.", ""): g for n, g in grads.items()}))
                (out_eager, grads_eager), (out_compiled, grads_compiled) = results
                missing = sorted(set(grads_eager) ^ set(grads_compiled))
                largest, listing = worst(grads_eager, {**grads_eager, **grads_compiled}, 12 if only_first else 4)
                ok = ok and largest <= 1e-4 and not missing
                if only_first:
                    from torch._dynamo.utils import counters

                    print(f"layer {estimator} {qk_init} {bits}-bit {backend}: grads {listing}", flush=True)
                    # one graph and no break on the CPU; a break at the ROSA Function on CUDA would
                    # explain a zero incoming gradient (the graph after it not seeing its input need one)
                    print(f"graphs {dict(counters['stats'])}, breaks {dict(counters['graph_break'])}", flush=True)
                    return ok
                print(f"layer {estimator} {qk_init} {bits}-bit {backend}: out {relative(out_eager, out_compiled):.1e}, "
                      f"grads {listing}" + (f", only one side has {missing}" if missing else ""), flush=True)
    return ok


def gradients(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    return logits.detach().cpu(), {name: p.grad.detach().cpu() for name, p in model.named_parameters()
                                   if p.grad is not None}


def relative(expected: torch.Tensor, got: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def worst(expected: dict, got: dict, count: int) -> tuple[float, str]:
    errors = sorted(((relative(expected[name], got[name]), name) for name in expected), reverse=True)
    return errors[0][0], " ".join(f"{name}={error:.1e}" for error, name in errors[:count])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rosa", nargs="+", default=["qkv1", "none"], choices=["qkv1", "qkv4", "none"])
    parser.add_argument("--max-gain", type=float, default=1.0, help="rosa_max_gain (0: unbounded)")
    parser.add_argument("--show", type=int, default=8, help="worst parameters listed per comparison")
    parser.add_argument("--rtol", type=float, default=1e-4, help="exit 1 when a compiled gradient is further off")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile back end (aot_eager: the same graphs without Inductor's code generation)")
    parser.add_argument("--rosa-eager", action="store_true",
                        help="run the ROSA ops outside the graphs (apply_compile(rosa_eager=True); "
                             "parallelize's eager_rosa, the CUDA default until the ninth session)")
    parser.add_argument("--wkv-backend", default="auto", choices=["auto", "chunked"],
                        help="chunked: the pure-PyTorch WKV7 on the GPU too (bisects the CUDA kernels out)")
    parser.add_argument("--rosa-engine", default="auto", choices=["auto", "cpu"],
                        help="cpu: the ROSA and estimator extensions run on the CPU for CUDA tensors")
    parser.add_argument("--no-deep-embed", action="store_true", help="the model without DeepEmbed")
    parser.add_argument("--patch", default="none", choices=["none", "decode-clone", "grad-clone"],
                        help="with --layer: try a change (decode-clone: the op's output is a fresh tensor, "
                             "not a view; grad-clone: the backward copies its incoming gradient first)")
    parser.add_argument("--trace", action="store_true",
                        help="with --layer: the first variant only, printing the value estimator's inputs")
    parser.add_argument("--layer", action="store_true",
                        help="check one ROSA-QKV block alone per estimator, key init and width, then stop")
    args = parser.parse_args(argv)
    if args.wkv_backend == "chunked":
        import heron.ops.wkv7 as wkv7_module

        wkv7_module._auto_backend = lambda r: "chunked"
    if args.rosa_engine == "cpu":
        import heron.ops.rosa as rosa_module
        import heron.ops.rosa.grad as rosa_grad_module
        from heron.ops._build import ExtensionUnavailable

        def unavailable():
            raise ExtensionUnavailable("disabled by --rosa-engine cpu")

        rosa_module.native_cuda = rosa_grad_module.native_flip_cuda = unavailable
    dtype = getattr(torch, args.dtype)
    if args.layer:
        if args.trace:
            trace_value_estimator()
        import heron.ops.rosa.grad as rosa_grad

        if args.patch == "decode-clone":
            original_decode = rosa_grad._decode
            rosa_grad._decode = lambda table, y, bits: original_decode(table, y, bits).clone()
        elif args.patch == "grad-clone":
            original_backward = rosa_grad._QKVROSA.backward
            rosa_grad._QKVROSA.backward = staticmethod(lambda ctx, grad_out: original_backward(ctx, grad_out.clone()))
        return 0 if layer_check(args.device, args.backend, dtype, only_first=args.trace) else 1
    tokens = torch.randint(0, 1024, (4, 256), generator=torch.Generator().manual_seed(4))
    failed = False
    for rosa in args.rosa:
        label = f"rosa={rosa} {args.dtype} {args.backend}{' rosa-eager' if args.rosa_eager else ''}" + (
            " no-deep-embed" if args.no_deep_embed else "") + (
            f" wkv={args.wkv_backend}" if args.wkv_backend != "auto" else "") + (
            f" rosa-engine={args.rosa_engine}" if args.rosa_engine != "auto" else "")
        cpu = build(None if rosa == "none" else rosa, dtype, args.max_gain or None, not args.no_deep_embed)
        logits_cpu, grads_cpu = gradients(cpu, tokens)
        eager = copy.deepcopy(cpu).to(args.device)
        logits_eager, grads_eager = gradients(eager, tokens.to(args.device))
        if args.device != "cpu":
            print(f"{label}: eager {args.device} vs cpu: logits {relative(logits_cpu, logits_eager):.1e}, "
                  f"grads {worst(grads_cpu, grads_eager, args.show)[1]}", flush=True)
        compiled = copy.deepcopy(eager)
        apply_compile(compiled, backend=args.backend, rosa_eager=args.rosa_eager)
        for call in (1, 2):  # the second call runs the cached graphs
            logits_compiled, grads_compiled = gradients(compiled, tokens.to(args.device))
            largest, listing = worst(grads_eager, grads_compiled, args.show)
            print(f"{label}: compiled call {call} vs eager: logits {relative(logits_eager, logits_compiled):.1e}, "
                  f"grads {listing}", flush=True)
            failed = failed or largest > args.rtol
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
