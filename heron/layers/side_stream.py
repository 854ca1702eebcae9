"""Run a branch of a block on a second CUDA stream, so that it overlaps the branch beside it.

RWKV-8's ROSA block reads the same block input as the time-mix and its output is only added at
the end (``x + att(ln1(x)) + rosa(ln3(x))``). Its costly part, the ROSA engine, is a
latency-bound integer kernel that leaves most of the GPU idle, as does the WKV recurrence, so
the two can share the GPU instead of taking turns on one stream:

    rosa_out = launch_on_side_stream(block.rosa, block.ln3(x))   # queued on the side stream
    att_out = block.att(block.ln1(x))                            # runs meanwhile on the main one
    rosa_out = join_side_stream(rosa_out)                        # the main stream waits here

Both functions are excluded from ``torch.compile`` (``torch.compiler.disable``). In a compiled
block they are graph breaks, and the whole branch runs eagerly: the ROSA block's projections
too, not only its ROSA op as ``heron.train.distributed.apply_compile(rosa_eager=True)`` does
(``eager_rosa`` has no effect on an overlapped block). Autograd runs each backward op on the
stream of its forward op and synchronises the streams where a gradient crosses them, so the
backward needs no extra code. The caching allocator is told which tensors cross streams
(``record_stream``) so that it reuses none of them too early.

On CPU tensors both functions are plain calls (``launch`` runs the module, ``join`` returns its
argument).

Distributed training: with DDP the parameters' gradients are still accumulated on the main
stream (DDP keeps the accumulation nodes it made), so its hooks fire after the engine's stream
waits; torch may warn that an accumulation node's stream differs from the forward's. FSDP2 is
refused (``heron.train.distributed.parallelize``): its post-backward reads gradients made on the
side stream mid-backward, and that ordering is not documented to be safe.
"""

from __future__ import annotations

import torch

_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream of a CUDA device (one per device, made on first use)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _SIDE_STREAMS.get(index)
    if stream is None:
        stream = _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return stream


@torch.compiler.disable
def launch_on_side_stream(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` queued on the device's side stream after everything queued so far on the
    current stream (which produced ``x``). The result must go through :func:`join_side_stream`
    before the current stream reads it."""
    if not x.is_cuda:
        return module(x)
    main = torch.cuda.current_stream(x.device)
    side = side_stream(x.device)
    side.wait_stream(main)
    # x was made on the main stream and is read on the side one: keep its memory until then
    x.record_stream(side)
    try:
        with torch.cuda.stream(side):
            return module(x)
    except BaseException:
        # no join will follow: make the main stream wait for what was queued on the side one
        main.wait_stream(side)
        raise


@torch.compiler.disable
def join_side_stream(out: torch.Tensor) -> torch.Tensor:
    """Make the current stream wait for the side stream's work so far (the launch that produced
    ``out``), and return ``out`` for use on the current stream."""
    if not out.is_cuda:
        return out
    main = torch.cuda.current_stream(out.device)
    main.wait_stream(side_stream(out.device))
    out.record_stream(main)
    return out
