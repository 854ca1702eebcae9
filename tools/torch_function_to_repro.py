"""Minimal reproduction of the torch 2.11 bug behind the compiled-ROSA gradients (docs/limits.md).

An ``autograd.Function`` whose forward returns ``out.to(dtype)`` with ``out`` already in that dtype
(``.to`` then returns ``out`` itself) gets an all-zero incoming gradient in its backward when it
is traced by ``torch.compile`` (``aot_eager`` shows it, so Inductor is not involved). Torch 2.11
(the GPU hosts' version) fails; 2.13 passes. Heron's ROSA Functions avoid the no-op ``.to``
(``heron.ops.rosa.grad._as_dtype``).

    python tools/torch_function_to_repro.py          # exit 1 where the bug is present
"""

from __future__ import annotations

import sys

import torch


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, v):
        return (v * 2.0).to(q.dtype)  # a no-op conversion: the trigger

    @staticmethod
    def backward(ctx, grad_out):
        return None, grad_out * 2.0


def function(x):
    return Double.apply(x * 3, x * 5) * 7


def input_gradient(fn) -> torch.Tensor:
    x = torch.linspace(-1.0, 1.0, 32).reshape(8, 4).requires_grad_(True)
    fn(x).sum().backward()
    return x.grad


def main() -> int:
    eager = input_gradient(function)
    compiled = input_gradient(torch.compile(function, backend="aot_eager"))
    same = torch.equal(eager, compiled)
    print(f"torch {torch.__version__}: eager input gradient sum {eager.sum().item():.1f}, compiled "
          f"{compiled.sum().item():.1f}: {'equal' if same else 'DIFFERENT (the bug)'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
