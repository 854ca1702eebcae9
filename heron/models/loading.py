"""Loading and saving models: every official checkpoint layout, and our own format.

Official layouts (spec/RWKV8.md §4, §6 and checkpoints/README.md), recognised from their keys:

- ``"task"``: the small task models (251105/260123 reversal, 251024 arithmetic) — keys ``e,
  ln{i}a, ln{i}b, ln{i}c, rwkv{i}, rosa{i}, ffn{i}, lno, o`` with 1-based layer numbers. They
  load into :class:`heron.models.rwkv8.RWKV8` (no ``ln0``, ROSA-QKV 1-bit beside the time-mix,
  RWKV-7 channel-mix, ``head`` with bias) through :func:`task_to_rwkv8_keys`.
- ``"rc00"``: RWKV-8 language models (``emb``, ``blocks.{i}.{ln0,ln1,ln2,att,ffn}``,
  ``ln_out``, ``head``), optionally with ROSA blocks (``blocks.{i}.ln3``, ``blocks.{i}.rosa``).
- ``"rosa_lm"``: the pure ROSA LM (``blocks.{i}.{ln0,ln2,ln3,rosa,ffn}`` and no ``att``).
- ``"counting"``: the counting toys (251016 1-bit, 251018 4-bit, and the EmbROSA-only and
  single-layer variants of the training scripts), handed to :mod:`heron.models.toys`; their
  keys are already the official ones.

Our own format is one safetensors file whose metadata holds the model class and its config as
JSON (``save(model, path)``); :func:`load` reads both kinds. The config of an official file is
inferred from tensor shapes (layers, width, head size from ``r_k``, vocabulary, LoRA ranks,
``dim_ffn``, DeepEmbed, ROSA presence). The one thing shapes cannot tell is the ROSA bit width
of a ROSA-QKV block (``rosa_qkv.emb`` is ``[1, 1, C]`` for 1 and 4 bits): it is 1 unless
``rosa_bits`` says otherwise or the file name says ``4bit`` (the official 4-bit LM's name does).

Official files may store tensors our modules do not hold because the official forward never
reads them (the pure ROSA LM's block creates ``ln0`` in every block; only block 0 applies it).
They are kept on the model as ``model.official_unused`` (and in our format), so converting to
ours and back reproduces the official file tensor for tensor.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = [
    "load",
    "save",
    "convert",
    "detect_layout",
    "read_official",
    "task_to_rwkv8_keys",
    "rwkv8_to_task_keys",
    "infer_rwkv8_config",
    "infer_rosa_lm_config",
    "official_state_dict",
    "LAYOUTS",
    "FORMAT_NAME",
]

FORMAT_NAME = "heron"
FORMAT_VERSION = "1"
LAYOUTS = ("task", "rc00", "rosa_lm", "counting", FORMAT_NAME)
_UNUSED_PREFIX = "official_unused."

# Per-channel vectors the official code stores as [1, 1, C] (our modules may hold [C]).
_OFFICIAL_VECTOR_SUFFIXES = (
    ".x_r", ".x_w", ".x_k", ".x_v", ".x_a", ".x_g", ".w0", ".a0", ".v0", ".k_k", ".k_a",
    ".x_q", ".rosa_qkv.emb", ".emb0", ".emb1",
)


# --------------------------------------------------------------------------------------------
# reading files


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_length <= path.stat().st_size - 8


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """An official ``.pth`` state dict: ``torch.load(map_location="cpu", weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        if handle.read(16) == b"HERON-CHECKPOINT":
            raise ValueError(f"{path} is a Heron training checkpoint (it continues a run: heron train --resume); "
                             f"the run's model file is {path.parent / 'model.safetensors'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # torch's own message advises weights_only=False, which would run the file's pickled code
        # and is never what a model file needs: name the failure only (--debug shows the rest)
        raise ValueError(f"{path} is not a model file: neither a PyTorch state dict nor Heron safetensors "
                         f"(torch.load: {type(exc).__name__})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path} holds non-tensor entries {bad[:5]}; expected a plain state dict")
    return dict(state)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the official layout of ``state_dict`` (one of ``LAYOUTS`` except ``"heron"``)."""
    keys = set(state_dict)
    if "emb_rosa.emb.weight" in keys:
        return "counting"
    if "e.weight" in keys and "rwkv1.r_k" in keys:
        return "task"
    if "emb.weight" in keys and "blocks.0.att.r_k" in keys:
        return "rc00"
    if "emb.weight" in keys and "blocks.0.rosa.q.weight" in keys and not any(".att." in k for k in keys):
        return "rosa_lm"
    sample = sorted(keys)[:8]
    raise ValueError(
        f"unrecognised checkpoint layout (first keys: {sample}); expected an official task model "
        f"(e, rwkv1, ...), an RWKV-8 rc00 model (emb, blocks.0.att, ...), a pure ROSA LM "
        f"(emb, blocks.0.rosa, ...), a counting toy (emb_rosa, ...) or a heron safetensors file"
    )


# --------------------------------------------------------------------------------------------
# task layout <-> RWKV8 keys

_TASK_LAYER_KEY = re.compile(r"^(ln(\d+)([abc])|rwkv(\d+)|rosa(\d+)|ffn(\d+))\.(.+)$")
_TASK_NORMS = {"a": "ln1", "b": "ln2", "c": "ln3"}
_TASK_MODULES = {"rwkv": "att", "rosa": "rosa", "ffn": "ffn"}


def task_to_rwkv8_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename task-layout keys to RWKV8 keys: ``e -> emb``, ``ln{i}a/b/c -> blocks.{i-1}.ln1/2/3``,
    ``rwkv{i} -> blocks.{i-1}.att``, ``rosa{i} -> .rosa``, ``ffn{i} -> .ffn``, ``lno -> ln_out``,
    ``o -> head``. Tensors are passed through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head == "e":
            out[f"emb.{rest}"] = value
        elif head == "lno":
            out[f"ln_out.{rest}"] = value
        elif head == "o":
            out[f"head.{rest}"] = value
        else:
            match = _TASK_LAYER_KEY.match(key)
            if match is None:
                raise ValueError(f"task-layout checkpoint has an unexpected key {key!r}")
            if match.group(2):
                layer, name = int(match.group(2)), _TASK_NORMS[match.group(3)]
            else:
                number = next(g for g in match.group(4, 5, 6) if g)
                layer = int(number)
                name = _TASK_MODULES[re.match(r"[a-z]+", key).group(0)]
            if layer < 1:
                raise ValueError(f"task-layout layer numbers start at 1, got key {key!r}")
            out[f"blocks.{layer - 1}.{name}.{match.group(7)}"] = value
    return out


_RWKV8_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(ln1|ln2|ln3|att|rosa|ffn)\.(.+)$")
_RWKV8_TO_TASK = {"ln1": "ln{}a", "ln2": "ln{}b", "ln3": "ln{}c", "att": "rwkv{}", "rosa": "rosa{}", "ffn": "ffn{}"}


def rwkv8_to_task_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`task_to_rwkv8_keys`; a key with no task-layout counterpart (``ln0``,
    DeepEmbed ``enn``) is a ValueError naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head in ("emb", "ln_out", "head"):
            out[{"emb": "e", "ln_out": "lno", "head": "o"}[head] + "." + rest] = value
            continue
        match = _RWKV8_BLOCK_KEY.match(key)
        if match is None or match.group(3).startswith("enn."):
            raise ValueError(f"key {key!r} has no counterpart in the official task layout")
        layer, module, name = int(match.group(1)), match.group(2), match.group(3)
        out[_RWKV8_TO_TASK[module].format(layer + 1) + "." + name] = value
    return out


# --------------------------------------------------------------------------------------------
# config inference


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"checkpoint is missing the key {key!r} needed to infer the model config")
    return tuple(state_dict[key].shape)


def _layer_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not layers:
        raise ValueError("checkpoint has no blocks.{i}.* keys")
    count = max(layers) + 1
    missing = sorted(set(range(count)) - layers)
    if missing:
        raise ValueError(f"checkpoint has no keys for blocks {missing} (found up to block {count - 1})")
    return count


def _config_kwargs(config_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """Keep the values the config dataclass accepts; a value it lacks a field for is an error
    only when it differs from what the class would do anyway (``None`` means "default")."""
    names = {field.name for field in dataclasses.fields(config_class)}
    kwargs = {}
    for name, value in values.items():
        if name in names:
            kwargs[name] = value
        elif value not in (None, False):
            raise ValueError(
                f"{config_class.__name__} has no field {name!r} for the inferred value {value!r}; "
                f"this checkpoint needs a model feature the config does not offer"
            )
    return kwargs


def infer_rwkv8_config(state_dict: Mapping[str, torch.Tensor], rosa_bits: int | None = None):
    """An :class:`~heron.models.rwkv8.RWKV8Config` from an rc00-layout (or renamed task-layout)
    state dict, using tensor shapes only."""
    from heron.models.rwkv8 import RWKV8Config

    vocab_size, n_embd = _shape(state_dict, "emb.weight")
    n_layer = _layer_count(state_dict)
    n_head, head_size = _shape(state_dict, "blocks.0.att.r_k")
    if n_head * head_size != n_embd:
        raise ValueError(f"blocks.0.att.r_k has shape {[n_head, head_size]}, expected [H, N] with H*N = n_embd = {n_embd}")
    dim_ffn = _shape(state_dict, "blocks.0.ffn.key.weight")[0]
    # v1 is absent from block 0 of rc00 files: read the value-residual rank from block 1.
    value_layer = 1 if n_layer > 1 else 0
    value_key = f"blocks.{value_layer}.att.v1"
    has_rosa = "blocks.0.rosa.q.weight" in state_dict
    values = {
        "n_layer": n_layer,
        "n_embd": n_embd,
        "head_size": head_size,
        "vocab_size": vocab_size,
        "dim_ffn": dim_ffn,
        "lora_rank_decay": _shape(state_dict, "blocks.0.att.w1")[1],
        "lora_rank_iclr": _shape(state_dict, "blocks.0.att.a1")[1],
        "lora_rank_value": _shape(state_dict, value_key)[1] if value_key in state_dict else None,
        "lora_rank_gate": _shape(state_dict, "blocks.0.att.g1")[1],
        # the task checkpoints keep layer 0's (unused) value-residual LoRA, rc00 files drop it
        "layer0_value_lora": "blocks.0.att.v0" in state_dict,
        "rosa": (f"qkv{rosa_bits or 1}" if has_rosa else None),
        "deep_embed": "blocks.0.ffn.enn.weight" in state_dict,
        "ln0": "blocks.0.ln0.weight" in state_dict,
        "head_bias": "head.bias" in state_dict,
    }
    return RWKV8Config(**_config_kwargs(RWKV8Config, values))


def infer_rosa_lm_config(state_dict: Mapping[str, torch.Tensor], rosa_bits: int | None = None):
    """A :class:`~heron.models.rosa_lm.ROSALMConfig` from a pure ROSA LM state dict."""
    from heron.models.rosa_lm import ROSALMConfig

    vocab_size, n_embd = _shape(state_dict, "emb.weight")
    values = {
        "n_layer": _layer_count(state_dict),
        "n_embd": n_embd,
        "vocab_size": vocab_size,
        "bits": rosa_bits or 1,
        "dim_ffn": _shape(state_dict, "blocks.0.ffn.key.weight")[0],
    }
    return ROSALMConfig(**_config_kwargs(ROSALMConfig, values))


# --------------------------------------------------------------------------------------------
# filling a model


def _fit_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reshape official ``[1, 1, C]`` vectors to the model's own shape where only the shape
    differs; a real size mismatch is reported with every offending key."""
    own = model.state_dict()
    fitted, mismatched = {}, []
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and tuple(target.shape) != tuple(value.shape):
            if target.numel() == value.numel() and key.endswith(_OFFICIAL_VECTOR_SUFFIXES + (".r_k",)):
                value = value.reshape(target.shape)
            else:
                mismatched.append(f"{key}: file {list(value.shape)} vs model {list(target.shape)}")
        fitted[key] = value
    if mismatched:
        raise ValueError("checkpoint tensors do not fit the model: " + "; ".join(mismatched))
    return fitted


def _fill(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``load_state_dict`` with a clear error naming every missing or unexpected key."""
    own_keys = set(model.state_dict())
    missing = sorted(own_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - own_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise ValueError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(_fit_shapes(model, state_dict), strict=True)
    return model


def _split_unused(model: nn.Module, state_dict: dict[str, torch.Tensor], unused_keys) -> dict[str, torch.Tensor]:
    """Move tensors the official forward never reads, and the model does not hold, aside."""
    own_keys = set(model.state_dict())
    extras = {k: state_dict.pop(k) for k in list(unused_keys) if k in state_dict and k not in own_keys}
    model.official_unused = extras
    return state_dict


def _from_task(state_dict: dict[str, torch.Tensor], rosa_bits: int | None) -> nn.Module:
    from heron.models.rwkv8 import RWKV8

    renamed = task_to_rwkv8_keys(state_dict)
    model = RWKV8(infer_rwkv8_config(renamed, rosa_bits))
    return _fill(model, renamed, "task-layout checkpoint")


def _from_rc00(state_dict: dict[str, torch.Tensor], rosa_bits: int | None) -> nn.Module:
    from heron.models.rwkv8 import RWKV8

    model = RWKV8(infer_rwkv8_config(state_dict, rosa_bits))
    return _fill(model, dict(state_dict), "rc00 checkpoint")


def _from_rosa_lm(state_dict: dict[str, torch.Tensor], rosa_bits: int | None) -> nn.Module:
    from heron.models.rosa_lm import ROSALM

    model = ROSALM(infer_rosa_lm_config(state_dict, rosa_bits))
    # The official block creates ln0 in every block; only block 0 applies it.
    unused = [k for k in state_dict if re.match(r"^blocks\.([1-9]\d*)\.ln0\.", k)]
    state_dict = _split_unused(model, dict(state_dict), unused)
    return _fill(model, state_dict, "pure ROSA LM checkpoint")


def _from_counting(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    from heron.models import toys

    return toys.from_official(state_dict)


# --------------------------------------------------------------------------------------------
# our format

def _model_entry(model: nn.Module) -> tuple[str, str, str]:
    """(module, class, config class) of a heron model: what our format records to rebuild it."""
    config = getattr(model, "config", None)
    module_name = type(model).__module__
    if not module_name.startswith("heron.") or config is None or not dataclasses.is_dataclass(config):
        raise TypeError(
            f"model must be a heron model with a dataclass .config (RWKV8, ROSALM, a counting toy), "
            f"got {type(model).__name__} from {module_name}"
        )
    return module_name, type(model).__name__, type(config).__name__


def _config_to_json(config) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` in our format: one safetensors file, the config JSON in its metadata.

    Tensors are saved as they are (dtype kept); ``model.official_unused`` tensors are saved
    under ``official_unused.`` so a converted official file converts back unchanged.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    module_name, class_name, config_name = _model_entry(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for key, value in getattr(model, "official_unused", {}).items():
        tensors[_UNUSED_PREFIX + key] = value.detach().to("cpu").contiguous()
    # safetensors refuses tensors that share memory: give each key its own storage.
    seen: set[int] = set()
    for key, value in tensors.items():
        pointer = value.data_ptr()
        if pointer in seen and value.numel() > 0:
            tensors[key] = value.clone()
        seen.add(pointer)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "module": module_name,
        "class": class_name,
        "config_class": config_name,
        "config": _config_to_json(model.config),
    }
    return _write_atomically(Path(path), lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def _write_atomically(path: Path, write) -> Path:
    """``write(temporary)`` beside ``path``, then rename over it: a crash never leaves a torn file."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the file to write, e.g. {path / 'model.safetensors'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # safetensors creates its files 0600; checkpoints and CSVs beside are 0644
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _load_heron(path: Path) -> nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is a safetensors file without heron metadata (format={metadata.get('format')!r})")
    required = ("module", "class", "config_class", "config")
    absent = [name for name in required if name not in metadata]
    if absent:
        raise ValueError(f"{path} metadata lacks {absent}")
    module_name = metadata["module"]
    if not module_name.startswith("heron."):
        raise ValueError(f"{path} names model module {module_name!r}; only heron.* models are loaded")
    module = importlib.import_module(module_name)
    model_class = getattr(module, metadata["class"], None)
    config_class = getattr(module, metadata["config_class"], None)
    if model_class is None or config_class is None:
        raise ValueError(f"{path} names {metadata['class']}/{metadata['config_class']}, which {module_name} lacks")
    try:
        config_values = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} holds a corrupt config JSON: {exc}") from exc
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(config_values) - known)
    if unknown:
        raise ValueError(f"{path} config has fields {unknown} that {config_class.__name__} does not know")
    model = model_class(config_class(**config_values))
    unused = {k[len(_UNUSED_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(_UNUSED_PREFIX)}
    model.official_unused = unused
    # A model saved in float64 (or bf16) comes back in that dtype, not the constructor's float32.
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(dtype=float_dtypes.pop())
    return _fill(model, tensors, str(path))


# --------------------------------------------------------------------------------------------
# public entry points


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    rosa_bits: int | None = None,
) -> nn.Module:
    """Load any official checkpoint or a heron safetensors file as a ready model.

    ``rosa_bits`` sets the bit width of ROSA-QKV blocks in official files (shapes cannot tell);
    by default 4 when the file name contains ``4bit``, else 1. ``dtype`` converts floating
    parameters (e.g. ``torch.float64`` for exact comparisons); ``device`` moves the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if rosa_bits is not None and rosa_bits not in (1, 4):
        raise ValueError(f"rosa_bits must be 1 or 4 (the official ROSA-QKV widths), got {rosa_bits!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if _is_safetensors(path):
        model = _load_heron(path)
    else:
        state_dict = read_official(path)
        if rosa_bits is None and "4bit" in path.name.lower():
            rosa_bits = 4
        model = _from_official(state_dict, rosa_bits)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device)


def _from_official(state_dict: dict[str, torch.Tensor], rosa_bits: int | None) -> nn.Module:
    layout = detect_layout(state_dict)
    if layout == "task":
        return _from_task(state_dict, rosa_bits)
    if layout == "rc00":
        return _from_rc00(state_dict, rosa_bits)
    if layout == "rosa_lm":
        return _from_rosa_lm(state_dict, rosa_bits)
    return _from_counting(state_dict)


def _official_shape(key: str, value: torch.Tensor) -> torch.Tensor:
    if value.dim() == 1 and key.endswith(_OFFICIAL_VECTOR_SUFFIXES):
        return value.reshape(1, 1, -1)
    return value


def official_state_dict(model: nn.Module, layout: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` in an official layout (``"task"``, ``"rc00"``, ``"rosa_lm"``,
    ``"counting"``); ``layout=None`` picks the model's natural one (``"task"`` for an
    RWKV8 without ``ln0`` and DeepEmbed but with 1-bit ROSA, else ``"rc00"``)."""
    state = {k: _official_shape(k, v.detach()) for k, v in model.state_dict().items()}
    state.update(getattr(model, "official_unused", {}))
    for key in [k for k in state if re.search(r"(^|\.)rosa\.(q\.weight|q\.bias|x_q)$", k)]:
        # ROSA blocks with rosa_qk_init="shared" have no key path (k = q): the official layout has
        # one, and k = q, x_k = x_q is the same model
        state.setdefault(re.sub(r"(q\.weight|q\.bias|x_q)$", lambda m: m.group(1).replace("q", "k"), key),
                         state[key].clone())
    name = type(model).__name__
    if name == "RWKV8":
        config = model.config
        natural = (
            "task"
            if not getattr(config, "ln0", True) and not getattr(config, "deep_embed", True)
            and getattr(config, "rosa", None) == "qkv1" and "head.bias" in state
            else "rc00"
        )
        layout = layout or natural
        if layout == "task":
            return _task_order(rwkv8_to_task_keys(state))
        if layout == "rc00":
            return _block_order(state)
        raise ValueError(f"layout must be 'task' or 'rc00' for an RWKV8 model, got {layout!r}")
    if name == "ROSALM":
        if layout not in (None, "rosa_lm"):
            raise ValueError(f"layout must be 'rosa_lm' for a ROSALM model, got {layout!r}")
        return _block_order(state)
    if name == "CountingToy":
        if layout not in (None, "counting"):
            raise ValueError(f"layout must be 'counting' for a CountingToy, got {layout!r}")
        return state  # the toys use the official module names
    raise TypeError(f"no official layout is known for {name}")


def _sort_key_blocks(key: str):
    match = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if key.startswith("emb."):
        return (0, 0, key)
    if match:
        return (1, int(match.group(1)), "")
    return (2, 0, key)


def _block_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """emb first, then blocks in layer order (stable within a block), then ln_out and head."""
    return dict(sorted(state.items(), key=lambda item: _sort_key_blocks(item[0])))


def _task_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def rank(key: str):
        if key.startswith("e."):
            return (0, 0)
        match = re.match(r"^(?:ln|rwkv|rosa|ffn)(\d+)", key)
        if match:
            return (1, int(match.group(1)))
        return (2, 0 if key.startswith("lno.") else 1)

    return dict(sorted(state.items(), key=lambda item: rank(item[0])))


def convert(source: str | Path, destination: str | Path, *, to: str = FORMAT_NAME, rosa_bits: int | None = None) -> Path:
    """Convert a checkpoint between formats.

    ``to="heron"`` writes our safetensors format from any checkpoint; ``to`` an official layout
    name (``"task"``, ``"rc00"``, ``"rosa_lm"``, ``"counting"``, ``"official"`` = the model's
    natural layout)
    writes a ``.pth`` state dict that the official scripts load with ``load_state_dict``.
    """
    destination = Path(destination)
    suffix = destination.suffix.lower()
    if to == FORMAT_NAME and suffix in (".pth", ".pt", ".bin"):
        raise ValueError(f"destination {destination.name!r}: to='heron' writes safetensors; name it .safetensors, "
                         "or convert to an official layout (to='official') for a .pth file")
    if to != FORMAT_NAME and suffix == ".safetensors":
        raise ValueError(f"destination {destination.name!r}: to={to!r} writes a .pth state dict, not safetensors")
    model = load(source, rosa_bits=rosa_bits)
    if to == FORMAT_NAME:
        return save(model, destination)
    if to not in ("official", "task", "rc00", "rosa_lm", "counting"):
        raise ValueError(f"to must be 'heron', 'official', 'task', 'rc00', 'rosa_lm' or 'counting', got {to!r}")
    from heron.layers.rosa import ROSAQKVOp

    qkv_bits = {module.bits for module in model.modules() if isinstance(module, ROSAQKVOp)}
    if 4 in qkv_bits and "4bit" not in destination.name.lower():
        # official files do not record the ROSA bit width: load() reads it from the file name
        raise ValueError(f"destination {destination.name!r}: the model has 4-bit ROSA blocks, and official files "
                         "do not record the bit width (heron.load reads 4 bits only from a name containing "
                         "'4bit'); put '4bit' in the file name")
    state = official_state_dict(model, None if to == "official" else to)
    return _write_atomically(destination, lambda temporary: torch.save(
        {k: v.contiguous().clone() for k, v in state.items()}, temporary))
