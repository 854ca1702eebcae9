"""The two official initialisation recipes and optimiser settings (spec/RWKV8.md §5).

- **Task recipe** (reverse, arithmetic, counting toys): every module keeps its own official initial
  values (``TimeMix.reset_parameters``, ``ChannelMix.reset_parameters``, torch defaults for
  ``Embedding``/``LayerNorm``/``Linear``); plain ``torch.optim.AdamW`` defaults (weight decay 0.01
  on every parameter, betas (0.9, 0.999), eps 1e-8), cosine schedule without warm-up.
- **Language-model recipe** (RWKV-7 ``train_temp``): the module values, then every 2-D ``.weight``
  re-initialised: zero for ``att.output`` and ``ffn.value``, orthogonal with gain 0.1 for
  ``att.key``, orthogonal with gain 1 for ``att.receptance``, ``att.value`` and ``ffn.key``;
  ``emb ~ U(±1e-4)``, ``head`` orthogonal with gain ``0.5 * sqrt(V / C)`` (V > C, else 0.5),
  ``ln_x.weight = ((layer + 1) / L) ** 0.7``. AdamW groups: weight decay only on matrices,
  ``att.w0`` at twice the learning rate, betas (0.9, 0.99), eps 1e-18, grad-norm clip 1.0,
  cosine decay after a short warm-up.

Choices where the spec is silent (documented in docs/models.md): the LM recipe sets the
channel-mix ``x_k = 1 - (i / C) ** ((1 - layer / L) ** 4)`` (RWKV-7 ``train_temp``), keeps the
DeepEmbed table at ones (the channel-mix starts as RWKV-7's) and keeps the ROSA blocks' module
values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from heron.layers.channel_mix import ChannelMix
from heron.layers.time_mix import TimeMix, orthogonal_init_

__all__ = [
    "init_task_recipe",
    "init_lm_recipe",
    "lm_param_groups",
    "make_lm_optimizer",
    "make_task_optimizer",
    "lm_learning_rate",
    "task_learning_rate",
    "LM_BETAS",
    "LM_EPS",
    "LM_GRAD_CLIP",
]

LM_BETAS = (0.9, 0.99)
LM_EPS = 1e-18
LM_GRAD_CLIP = 1.0
TASK_WEIGHT_DECAY = 0.01


def _reset_rosa_qkv_block(module: nn.Module) -> None:
    """The ROSA-QKV block's official values (spec/ROSA.md §3): ``x_q = x_k = x_v = 0``,
    ``rosa_qkv.emb = 1``; its Linear layers were reset to torch's defaults already. A block built
    with ``qk_init="tied"`` then copies its query path into its key path again."""
    for name in ("x_q", "x_k", "x_v"):
        if getattr(module, name) is not None:  # qk_init="shared" has no x_k
            getattr(module, name).zero_()
    module.rosa_qkv.emb.fill_(1.0)
    if getattr(module, "qk_init", "independent") == "tied":
        module.tie_qk_()


def _reset_post_order(module: nn.Module) -> None:
    # children first, so a parent that sets its children's values (TimeMix sets its Linear layers)
    # has the last word
    for child in module.children():
        _reset_post_order(child)
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
    elif _is_rosa_qkv_block(module):  # the ROSA layer defines no reset_parameters
        _reset_rosa_qkv_block(module)


def _is_rosa_qkv_block(module: nn.Module) -> bool:
    try:
        from heron.layers.rosa import ROSAQKV
    except ImportError:  # without the ROSA layer no model can hold one
        return False
    return isinstance(module, ROSAQKV)


@torch.no_grad()
def init_task_recipe(model: nn.Module) -> nn.Module:
    """Re-draw every parameter from its module's official initial value (the task scripts' recipe)."""
    _reset_post_order(model)
    return model


def _model_layout(model: nn.Module):
    for name in ("emb", "blocks", "head"):
        if not hasattr(model, name):
            raise TypeError(f"init_lm_recipe expects an RWKV8-layout model with .{name}, got {type(model).__name__}")
    return model.emb, model.blocks, model.head


@torch.no_grad()
def init_lm_recipe(model: nn.Module) -> nn.Module:
    """The language-model recipe of RWKV-7 ``train_temp`` (see the module docstring)."""
    emb, blocks, head = _model_layout(model)
    init_task_recipe(model)
    n_layer = len(blocks)
    n_embd = emb.weight.shape[1]
    vocab_size = head.weight.shape[0]
    emb.weight.uniform_(-1e-4, 1e-4)
    head_gain = 0.5 * math.sqrt(vocab_size / n_embd) if vocab_size > n_embd else 0.5
    orthogonal_init_(head.weight, head_gain)
    if head.bias is not None:
        head.bias.zero_()
    for layer, block in enumerate(blocks):
        att, ffn = block.att, block.ffn
        if not isinstance(att, TimeMix) or not isinstance(ffn, ChannelMix):
            raise TypeError("init_lm_recipe expects blocks with a TimeMix .att and a ChannelMix .ffn")
        orthogonal_init_(att.receptance.weight, 1.0)
        orthogonal_init_(att.key.weight, 0.1)
        orthogonal_init_(att.value.weight, 1.0)
        att.output.weight.zero_()
        att.ln_x.weight.fill_(((layer + 1) / n_layer) ** 0.7)
        orthogonal_init_(ffn.key.weight, 1.0)
        ffn.value.weight.zero_()
        ratio_1_to_almost0 = 1.0 - layer / n_layer
        channel_fraction = torch.arange(n_embd, dtype=torch.float64, device=ffn.x_k.device) / n_embd
        ffn.x_k.copy_((1.0 - channel_fraction ** (ratio_1_to_almost0**4)).view(1, 1, n_embd))
    return model


@torch.no_grad()
def perturb_zeroed_outputs_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Draw the output projections that :func:`init_lm_recipe` zeroes (time-mix ``output``,
    channel-mix ``value``) from ``N(0, std^2)``, so that every parameter gets a non-zero gradient:
    for gradient comparisons (compiled against eager, one stream against two), never training."""
    for block in _model_layout(model)[1]:
        block.att.output.weight.normal_(std=std)
        block.ffn.value.weight.normal_(std=std)
    return model


def lm_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.1) -> list[dict]:
    """AdamW parameter groups of the LM recipe: decay on matrices (``*.weight`` with >= 2 dims),
    none elsewhere; ``att.w0`` at ``2 * lr``. Each group carries ``lr_scale`` (1 or 2) so a
    schedule can set ``group["lr"] = lr_now * group["lr_scale"]``."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    decay, no_decay, double_lr = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith("att.w0"):
            double_lr.append(param)
        elif name.endswith("weight") and param.dim() >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr, "lr_scale": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr, "lr_scale": 1.0, "name": "no_decay"},
        {"params": double_lr, "weight_decay": 0.0, "lr": 2 * lr, "lr_scale": 2.0, "name": "w0_2x"},
    ]
    return [group for group in groups if group["params"]]


def make_lm_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW over :func:`lm_param_groups` with betas (0.9, 0.99) and eps 1e-18."""
    return torch.optim.AdamW(lm_param_groups(model, lr, weight_decay), lr=lr, betas=LM_BETAS, eps=LM_EPS)


def make_task_optimizer(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """The task scripts' optimiser: AdamW defaults (weight decay 0.01 on every parameter)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=TASK_WEIGHT_DECAY)


def _cosine(progress: float, lr_start: float, lr_end: float) -> float:
    return lr_end + 0.5 * (lr_start - lr_end) * (1.0 + math.cos(math.pi * progress))


def task_learning_rate(step: int, total_steps: int, lr_start: float, lr_end: float) -> float:
    """Cosine from ``lr_start`` (step 0) to ``lr_end`` (last step), no warm-up."""
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}), got {step}")
    return _cosine(step / max(total_steps - 1, 1), lr_start, lr_end)


def lm_learning_rate(step: int, total_steps: int, lr_start: float, lr_end: float, warmup_steps: int = 10) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay from ``lr_start`` to ``lr_end``."""
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, total_steps={total_steps}), got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step < warmup_steps:
        return lr_start * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps - 1, 1)
    return _cosine((step - warmup_steps) / span, lr_start, lr_end)
