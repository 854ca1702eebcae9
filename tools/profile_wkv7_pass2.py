"""One launch of the split WKV7 backward's Triton pass at an anchor shape, for a profiler:

    ncu -k regex:stacked --launch-count 1 --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python tools/profile_wkv7_pass2.py --shape 8 4096 32 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heron.ops.wkv7 import cuda as wkv7_cuda  # noqa: E402
from heron.ops.wkv7 import split_backward  # noqa: E402
from heron.ops.wkv7.inputs import random_inputs  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 4096, 32, 64], metavar=("B", "T", "H", "N"))
    parser.add_argument("--launches", type=int, default=3)
    args = parser.parse_args(argv)
    B, T, H, N = args.shape
    inputs = list(random_inputs(B, T, H, N, dtype=torch.bfloat16, device="cuda", seed=0, with_state=False,
                                draw_on_device=True)[:6])
    grad_y = torch.randn_like(inputs[0])
    stride = wkv7_cuda.split_checkpoint_stride(N, inputs[0].dtype)
    chunk = stride * wkv7_cuda.segment_length(N)
    _, _, removal, checkpoints = wkv7_cuda.cuda_forward(*inputs, None, True, wkv7_cuda.FORWARD_ROWS_PER_THREAD, stride)
    pass1 = wkv7_cuda.cuda_state_gradients(*inputs[:3], *inputs[4:], grad_y, None,
                                           wkv7_cuda.STATE_GRADIENT_ROWS_PER_THREAD, stride)
    for _ in range(args.launches):
        split_backward.chunk_gradients_triton(*inputs, grad_y, removal, pass1[0], checkpoints, pass1[2], chunk)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
