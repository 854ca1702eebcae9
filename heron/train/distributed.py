"""Data parallelism through ``torchrun`` (PyTorch DDP: NCCL on GPUs, gloo on CPU).

The same command line runs alone or under ``torchrun --nproc_per_node=N``. Every rank draws the
whole global batch from the shared, identically seeded generator and keeps its own slice, so
the samples a step sees — and therefore the results — do not depend on ``N`` (up to the order
of the floating-point reductions). Rank 0 alone logs and writes checkpoints.

``parallel = "fsdp"`` shards parameters, gradients and optimiser state with FSDP2
(``torch.distributed.fsdp.fully_shard`` on every block, then on the root); checkpoints then hold
the full state dicts gathered on rank 0 (``torch.distributed.checkpoint.state_dict``), the same
model keys as DDP checkpoints, so a run may resume in either mode.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: int) -> slice:
        """This rank's rows of a micro-batch of ``rows`` rows."""
        if rows % self.world_size:
            raise ValueError(
                f"the micro-batch of {rows} rows cannot be split evenly over {self.world_size} "
                f"processes: choose batch_size divisible by grad_accum * world size"
            )
        per_rank = rows // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_flag(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when any rank raised ``flag`` (so all stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); alone without them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.is_initialized():
        return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, initialized_here=True)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks this rank's GPU under torchrun (``LOCAL_RANK``), else the first GPU, else CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    return device


def may_leave_parameters_unused(model: torch.nn.Module) -> bool:
    """Whether a training forward of ``model`` (or of the loss wrapper holding it as ``.model``)
    can leave a trainable parameter out of the autograd graph, so that DDP must be built with
    ``find_unused_parameters=True``.

    That option is not free: after every forward DDP walks the whole autograd graph to find the
    parameters that will get no gradient (and warns when it finds none), which costs multi-GPU
    scaling. It is also not optional when a parameter is unused: DDP then waits for a gradient
    that never comes and fails at the next step. So decide from the model:

    - heron's own models (``RWKV8``, ``ROSALM``, ``CountingToy``) use every parameter in every
      training forward — no module is skipped, the ROSA estimators return a gradient (zeros at
      worst) for every input, DeepEmbed and the chunked cross-entropy read their tables and head
      on every step — except one layout: the official task checkpoints keep ``v0 v1 v2`` in
      block 0's time-mix (``layer0_value_lora``), which layer 0 never reads (it *produces*
      ``v_first``). Only then is the option needed.
    - any other model (a task's own module, a test's toy): we cannot tell, so keep the safe
      setting.
    """
    from heron.train.losses import LossModel

    if isinstance(model, LossModel):
        model = model.model
    known = _known_model_classes()
    if not isinstance(model, known):
        return True
    from heron.layers.time_mix import TimeMix

    for module in model.modules():
        if isinstance(module, TimeMix) and not module.mixes_value_with_first_layer:
            unread = [getattr(module, name) for name in ("v0", "v1", "v2") if hasattr(module, name)]
            if any(p.requires_grad for p in unread):
                return True
    return False


def _known_model_classes() -> tuple[type, ...]:
    from heron.models.rosa_lm import ROSALM
    from heron.models.rwkv8 import RWKV8
    from heron.models.toys import CountingToy

    return RWKV8, ROSALM, CountingToy


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device,
               find_unused_parameters: bool | None = None) -> torch.nn.Module:
    """DDP around ``model`` when several processes run. ``find_unused_parameters``: None decides
    from the model (:func:`may_leave_parameters_unused`: only the official task layout, whose
    block 0 keeps the unused ``v0 v1 v2``, and models heron does not know need it)."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if find_unused_parameters is None:
        find_unused_parameters = may_leave_parameters_unused(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


# ---------------------------------------------------------------------------------------------
# execution options: activation checkpointing, compilation, DDP or FSDP2


def model_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The model's list of residual blocks (``RWKV8.blocks``, ``ROSALM.blocks``), or None."""
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) else None


def apply_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recompute every block's activations in the backward pass (``torch.utils.checkpoint``,
    non-reentrant). The block keeps its class, parameters and state-dict keys: only its
    ``forward`` is replaced by a checkpointed call of the original."""
    from torch.utils.checkpoint import checkpoint

    blocks = model_blocks(model)
    if blocks is None:
        raise ValueError(f"grad_checkpointing needs a model with a .blocks list; {type(model).__name__} has none")
    for block in blocks:
        original = block.forward

        def checkpointed(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():  # evaluation: nothing to recompute
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def compile_options() -> dict[str, object]:
    """Inductor options for :func:`apply_compile` on this version of torch.

    torch 2.10 turned on Inductor's "mix-order reduction" (Triton back ends, i.e. GPUs; the CPU
    back end never uses it), which fuses a reduction over the rows of a tensor with one over its
    columns. A block's backward is full of such pairs: a LayerNorm / ``F.normalize`` backward
    sums over the channels of each position, while the gradient of a broadcast parameter of
    shape ``[1, 1, C]`` (``x_r ... x_g``, ``k_k``, the channel-mix ``x_k``) sums over the
    positions. torch 2.10/2.11 return the fused kernel's column sums with the reduction's flat
    shape ``[C]`` instead of the buffer's declared ``[1, 1, C]`` (pytorch/pytorch#178080, fixed
    by #178098: 2.13's ``SIMDScheduling._codegen_mix_order_reduction`` restores the shape with a
    ``.view``), so the compiled backward fails with "CompiledFunctionBackward returned an invalid
    gradient at index N - got [C] but expected shape compatible with [1, 1, C]" — the error of
    ``benchmarks/train_step.py --compile`` with torch 2.11 on an H100. On those versions (2.12
    included: not checked) we turn the fusion off for our compiled blocks only; the two
    reductions then run as separate kernels.
    """
    from torch.torch_version import TorchVersion

    version = TorchVersion(torch.__version__)
    if (2, 10) <= version < (2, 13):
        return {"triton.mix_order_reduction": False}
    return {}


def _rosa_op_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers that call a trainable ROSA op (``ROSABits``, ``ROSAQKVOp``)."""
    from heron.layers.rosa import ROSABits, ROSAQKVOp

    return [module for module in model.modules() if isinstance(module, (ROSABits, ROSAQKVOp))]


def apply_compile(model: torch.nn.Module, backend: str = "inductor", *, rosa_eager: bool = False) -> None:
    """``torch.compile`` every block in place (``Module.compile``: names and state-dict keys
    unchanged), or the whole model when it has no blocks; :func:`compile_options` says which
    Inductor options this torch needs. ``backend``: torch.compile's (tests trace with
    ``"aot_eager"``: the same graphs and autograd, without Inductor's code generation).

    ``rosa_eager``: run the trainable ROSA ops outside the graphs (their layers'
    ``eager_under_compile``: one graph break around each op call; the projections and everything
    else of the block stay compiled); without it they compile with their blocks (the default, and
    the flag is cleared again). Under torch 2.11 the compiled ROSA ops once gave wrong gradients to
    everything below them (a torch tracing bug, avoided since the eighth session by
    ``heron.ops.rosa.grad._as_dtype``; confirmed on an H100 in the ninth session by
    ``tools/compile_grad_check.py`` and ``test_compiled_rosa_blocks_on_gpu``: docs/limits.md), so
    until then :func:`parallelize` kept them eager on CUDA; now it does so only when asked. Both
    paths give the same gradients, and on an H100 the same speed."""
    blocks = model_blocks(model)
    if backend != "inductor":
        kwargs = {"backend": backend}
    else:
        options = compile_options()
        kwargs = {"options": options} if options else {}
    for layer in _rosa_op_layers(model):
        layer.eager_under_compile = rosa_eager
    for module in blocks if blocks is not None else [model]:
        module.compile(**kwargs)


_FSDP_PREFIX = "model."  # the trained model is the ``model`` submodule of the loss wrapper


class ParallelModel:
    """The module the training step calls (``root``: the loss wrapper, bare, in DDP or sharded by
    FSDP2) and how every process reads and writes the model and optimiser state.

    Under FSDP the state methods are collectives (call them on every rank); they return full,
    CPU state dicts keyed like the unwrapped model on rank 0 and ``None`` elsewhere, so FSDP and
    DDP checkpoints are interchangeable."""

    def __init__(self, model: torch.nn.Module, root: torch.nn.Module, context: DistributedContext, mode: str,
                 template: torch.nn.Module | None = None) -> None:
        self.model, self.root, self.context, self.mode = model, root, context, mode
        self.template = template  # FSDP: an unsharded copy of the model on the meta device (rank 0)

    @contextlib.contextmanager
    def no_sync(self):
        """Gradient accumulation without communication (the last micro-step reduces)."""
        if self.mode == "ddp":
            with self.root.no_sync():
                yield
        elif self.mode == "fsdp":
            self.root.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.root.set_requires_gradient_sync(True)
        else:
            yield

    def clip_grad_norm(self, parameters, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP
        return full_tensor() if full_tensor is not None else norm

    def _options(self, **kwargs):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(**kwargs)

    def model_state(self) -> dict[str, torch.Tensor] | None:
        if self.mode != "fsdp":
            return self.model.state_dict() if self.context.is_main else None
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.root, options=self._options(full_state_dict=True, cpu_offload=True))
        if not self.context.is_main:
            return None
        return {key.removeprefix(_FSDP_PREFIX): value for key, value in state.items()}

    def _parameter_names(self, optimizer) -> list[str]:
        names = {id(parameter): name for name, parameter in self.model.named_parameters()}
        return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]

    def optimizer_state(self, optimizer) -> dict | None:
        """DDP / one process: ``optimizer.state_dict()`` (parameters by index); FSDP: the full
        state keyed by parameter name (``get_optimizer_state_dict``)."""
        if self.mode != "fsdp":
            return optimizer.state_dict() if self.context.is_main else None
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(self.root, optimizer,
                                         options=self._options(full_state_dict=True, cpu_offload=True))
        if not self.context.is_main:
            return None
        return _rename_optimizer_state(state, lambda key: key.removeprefix(_FSDP_PREFIX))

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        """Either layout, whichever mode wrote it (every rank passes the full state)."""
        names = self._parameter_names(optimizer)
        by_name = _is_by_name(state)
        if self.mode != "fsdp":
            if by_name:
                index = {name: i for i, name in enumerate(names)}
                state = _rename_optimizer_state(state, lambda key: index[key])
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if not by_name:
            state = _rename_optimizer_state(state, lambda key: names[key])
        state = _rename_optimizer_state(state, lambda key: _FSDP_PREFIX + key)
        # strict=False: parameters that never received a gradient (the unused ``v0 v1 v2`` of the
        # official task layout's block 0) have no optimiser state to restore.
        set_optimizer_state_dict(self.root, optimizer, state, options=self._options(full_state_dict=True, strict=False))

    def plain_model(self, device: torch.device) -> torch.nn.Module | None:
        """The unwrapped model with its full weights on rank 0 (None elsewhere), for evaluation
        and export. Under FSDP a collective: gathers the weights into a copy on ``device``;
        :meth:`release` frees it."""
        if self.mode != "fsdp":
            return self.model if self.context.is_main else None
        state = self.model_state()
        if not self.context.is_main:
            return None
        plain = self.template.to_empty(device=device)
        plain.load_state_dict(state)
        return plain

    def release(self) -> None:
        if self.mode == "fsdp" and self.template is not None:
            self.template.to_empty(device="meta")


def _is_by_name(state: dict) -> bool:
    groups = state.get("param_groups") or []
    keys = [p for group in groups for p in group.get("params", [])] + list(state.get("state", {}))
    return any(isinstance(key, str) for key in keys)


def _rename_optimizer_state(state: dict, rename) -> dict:
    return {
        "state": {rename(key): value for key, value in state.get("state", {}).items()},
        "param_groups": [{**group, "params": [rename(p) for p in group["params"]]}
                         for group in state.get("param_groups", [])],
    }


def parallelize(model: torch.nn.Module, root: torch.nn.Module, context: DistributedContext, device: torch.device,
                *, parallel: str = "ddp", grad_checkpointing: bool = False, compile: bool = False,
                eager_rosa: bool = False, rosa_overlap: bool = False,
                template: torch.nn.Module | None = None) -> ParallelModel:
    """Apply the execution options to ``model`` (the ``model`` submodule of ``root``, the loss
    wrapper) and wrap ``root``: activation checkpointing, then ``torch.compile``, then DDP or
    FSDP2 (``fully_shard`` per block — DeepEmbed tables included, they live in the blocks — then
    on the root). One process: no wrapper. ``template`` (FSDP, rank 0): an unsharded copy of the
    model for evaluation and export, moved to the meta device here.

    ``compile`` compiles the trainable ROSA ops with their blocks, on every device; ``eager_rosa``
    (with ``compile``) runs them eagerly between the compiled graphs instead (``apply_compile(
    rosa_eager=True)``: the same gradients; the CUDA default until the ninth session confirmed the
    fix of the compiled ROSA gradients on a GPU, docs/limits.md).

    ``rosa_overlap``: ``RWKV8.overlap_rosa`` (each ROSA block on a second CUDA stream beside its
    time-mix); the model must have ROSA blocks beside a time-mix."""
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    if root.model is not model:
        raise ValueError("root must hold the model as its .model submodule")
    if rosa_overlap:
        if parallel == "fsdp" and context.enabled:
            raise ValueError("rosa_overlap cannot be combined with parallel = 'fsdp' (FSDP2's post-backward would "
                             "read gradients made on the side stream; see heron.layers.side_stream): use DDP")
        overlap = getattr(model, "overlap_rosa", None)
        if overlap is None or not any(getattr(block, "has_rosa", False) for block in model_blocks(model) or []):
            raise ValueError(f"rosa_overlap: {type(model).__name__} has no ROSA block beside a time-mix to overlap "
                             "(an RWKV-8 model with rosa set)")
        overlap(True)
    if grad_checkpointing:
        apply_grad_checkpointing(model)
    if compile:
        apply_compile(model, rosa_eager=eager_rosa)
    if not context.enabled:
        return ParallelModel(model, root, context, "single")
    if parallel == "ddp":
        return ParallelModel(model, wrap_model(root, context, device), context, "ddp")
    if any(getattr(module, "deep_embed_on_cpu", False) for module in model.modules()):
        raise ValueError("parallel = 'fsdp' shards the DeepEmbed tables with the blocks: "
                         "set deep_embed_on_cpu = false (or use parallel = 'ddp')")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (context.world_size,))
    for block in model_blocks(model) or []:
        fully_shard(block, mesh=mesh)
    fully_shard(root, mesh=mesh)
    if template is not None:
        template.to("meta")
    return ParallelModel(model, root, context, "fsdp", template)
