"""Registers and spills of the split WKV7 backward's Triton kernels, without a GPU.

Triton compiles a kernel for a named target on any machine; the PTX then goes through the
``ptxas`` Triton bundles, whose ``-v`` report gives the registers per thread and the bytes spilled.
Registers bound these kernels (the tenth session's profile of the stacked kernel on an H200: 12.5%
occupancy, set by registers and shared memory, and the L1 the busiest unit, with its spills), but
fewer spills alone did not make a layout faster, so time a change after checking it here.

    python tools/triton_resources.py                     # the defaults, head sizes 16-128
    python tools/triton_resources.py --chunk 32 64 --warps 4 8 --head-size 64
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ptxas_candidates():
    import triton

    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    found = sorted(folder.glob("ptxas*"), reverse=True)  # ptxas-blackwell (newer) first
    return [str(p) for p in found] + ["ptxas"]


def _signature(kernel, dtype):
    signature = {}
    for name in kernel.arg_names:
        if name in ("u_ptr", "gb_ptr", "states_ptr", "futures_ptr"):
            signature[name] = "*fp32"
        elif name == "stepped_ptr":
            signature[name] = "*i8"
        elif name.endswith("_ptr"):
            signature[name] = "*" + dtype
        elif name in ("T", "H", "num_chunks"):
            signature[name] = "i32"
        elif name in ("max_log_decay", "max_step_log_decay"):
            signature[name] = "fp32"
        else:
            signature[name] = "constexpr"
    return signature


def report(kernel_name, head_size, chunk, columns, warps, dtype="bf16", precision="tf32", arch=90, stages=3,
           max_registers=0):
    """ptxas's one-line summary (registers, stack, spills) of one build."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from heron.ops.wkv7 import triton_kernels

    kernel = getattr(triton_kernels, kernel_name)
    constants = {"N": head_size, "L": chunk}
    if "BJ" in kernel.arg_names:
        constants["BJ"] = columns
    if "PRECISION" in kernel.arg_names:
        constants["PRECISION"] = precision
    compiled = triton.compile(ASTSource(fn=kernel, signature=_signature(kernel, dtype), constexprs=constants),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages,
                                       **({"maxnreg": max_registers} if max_registers else {})})
    with tempfile.TemporaryDirectory() as folder:
        ptx = os.path.join(folder, "kernel.ptx")
        Path(ptx).write_text(compiled.asm["ptx"])
        errors = []
        for ptxas in _ptxas_candidates():
            try:
                run = subprocess.run([ptxas, f"-arch=sm_{arch}a", "-v", "-O3", ptx, "-o",
                                      os.path.join(folder, "kernel.cubin")], capture_output=True, text=True)
            except FileNotFoundError:
                continue
            if run.returncode == 0:
                lines = [line.split("info    :")[-1].strip() for line in run.stderr.splitlines()
                         if "spill" in line or "Used" in line]
                return " | ".join(lines)
            errors.append(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"{ptxas} failed")
    raise RuntimeError("no bundled ptxas accepted the PTX: " + "; ".join(errors))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", nargs="+", default=["stacked_chunk_kernel", "stepped_kernel"])
    parser.add_argument("--head-size", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--chunk", type=int, nargs="+", default=[32])
    parser.add_argument("--columns", type=int, nargs="+", default=[16], help="key columns per step of the exact path (BJ)")
    parser.add_argument("--warps", type=int, nargs="+", default=[4])
    parser.add_argument("--stages", type=int, nargs="+", default=[3],
                        help="software-pipelining depth (num_stages; 3 is what a launch without it gets on sm_90)")
    parser.add_argument("--max-registers", type=int, default=0, help="register cap per thread (maxnreg; 0: none)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--precision", default="tf32", choices=["tf32", "ieee", "tf32x3"])
    args = parser.parse_args(argv)
    for name, n, chunk, columns, warps, stages in itertools.product(args.kernel, args.head_size, args.chunk,
                                                                    args.columns, args.warps, args.stages):
        if columns > n:
            continue
        summary = report(name, n, chunk, columns, warps, args.dtype, args.precision, stages=stages,
                         max_registers=args.max_registers)
        print(f"{name} N={n} chunk={chunk} columns={columns} warps={warps} stages={stages} {args.dtype}/{args.precision}: "
              f"{summary}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
