import cProfile, pstats, sys, time, torch
from heron.ops.wkv7 import wkv7, cuda as wc
from benchmarks.wkv7 import make_inputs

B, T, H, N = 1, 64, 1, 64
inputs = make_inputs(B, T, H, N, torch.bfloat16, torch.device("cuda"))
leaves = [x.clone().requires_grad_() for x in inputs]
grad_y = torch.randn_like(inputs[0])

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

def fwdgrad():
    for x in leaves: x.grad = None
    y = wkv7(*leaves, backend="cuda")
    torch.autograd.grad(y, leaves, grad_y)

print("fwd+bwd", host(fwdbwd), "us; autograd.grad", host(fwdgrad))
torch.autograd.set_multithreading_enabled(False)
print("fwd+bwd, autograd on the calling thread", host(fwdbwd))
original = wc._setup_context
def setup(ctx, inputs, output):
    original(ctx, inputs, output)
    ctx.set_materialize_grads(False)
wc.cuda_forward.register_autograd(wc._backward, setup_context=setup)
print("fwd+bwd, no materialized grads, calling thread", host(fwdbwd))
profiler = cProfile.Profile()
profiler.enable()
for _ in range(200): fwdbwd()
profiler.disable()
torch.cuda.synchronize()
pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
