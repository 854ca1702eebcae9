"""Host (CPU) time per call of each piece of the WKV7 CUDA fwd+bwd, no syncs inside the loops."""
import sys, time, torch
from heron.ops.wkv7 import wkv7, cuda as wc, split_backward
from benchmarks.wkv7 import make_inputs

B, T, H, N = (int(x) for x in (sys.argv[1:5] if len(sys.argv) > 4 else (1, 64, 1, 64)))
inputs = make_inputs(B, T, H, N, torch.bfloat16, torch.device("cuda"))
leaves = [x.clone().requires_grad_() for x in inputs]
grad_y = torch.randn_like(inputs[0])
stride = wc.split_checkpoint_stride(N)
chunk = stride * wc.segment_length(N)
ext = wc.load()
_, _, removal, checkpoints = wc.cuda_forward(*inputs, None, True, 4, stride)
p1 = wc.cuda_state_gradients(*inputs[:3], *inputs[4:], grad_y, None, 4, stride)
saved = (*inputs, grad_y, removal, p1[0], checkpoints, p1[2])
kern = split_backward._kernels(inputs[0].device)

def host(fn, n=300):
    for _ in range(10): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e6 * (t1 - t0) / n

def fwdbwd():
    for x in leaves: x.grad = None
    y = wkv7(*leaves, backend="cuda")
    y.backward(grad_y)

def fwd_grad():
    return wkv7(*leaves, backend="cuda")

grads5 = [torch.empty_like(inputs[0]) for _ in range(5)]
stepped = torch.empty(B * H * (-(-T // chunk)), dtype=torch.int8, device="cuda")
args = (*saved, *grads5, stepped, T, H, -(-T // chunk), 60.0, 1.5)
pieces = {
    "fwd+bwd (autograd)": fwdbwd,
    "wkv7 forward with grad": fwd_grad,
    "op cuda_forward": lambda: wc.cuda_forward(*inputs, None, True, 4, stride),
    "extension.forward": lambda: ext.forward(*inputs, None, True, 4, stride, wc._stream(inputs[0].device)),
    "op cuda_state_gradients": lambda: wc.cuda_state_gradients(*inputs[:3], *inputs[4:], grad_y, None, 4, stride),
    "extension.state_gradients": lambda: ext.state_gradients(*inputs[:3], *inputs[4:], grad_y, None, 4, stride, wc._stream(inputs[0].device)),
    "op chunk_gradients": lambda: wc.chunk_gradients(*saved, chunk, 0),
    "chunk_gradients_triton": lambda: split_backward.chunk_gradients_triton(*saved, chunk),
    "stacked kernel launch": lambda: kern.stacked_chunk_kernel[(stepped.numel(),)](*args, N=N, L=chunk, PRECISION="tf32", num_warps=4),
    "stepped kernel launch": lambda: kern.stepped_kernel[(stepped.numel(),)](*args, N=N, L=chunk, BJ=16, num_warps=4),
    "zeros_like x3 (materialized grads)": lambda: (torch.zeros_like(checkpoints), torch.zeros_like(removal), torch.zeros(B, H, N, N, device="cuda")),
    "torch.empty_like": lambda: torch.empty_like(inputs[0]),
}
for name, fn in pieces.items():
    print(f"{(B, T, H, N)} {name}: {host(fn):.1f} us", flush=True)
