"""Heron's models: RWKV-8 (with or without ROSA), the pure ROSA LM, the counting toys, and
loading/saving of every official layout and our own safetensors format."""

from heron.models.loading import convert, load, save
from heron.models.rosa_lm import ROSALM, ROSALMConfig, ROSALMState
from heron.models.rwkv8 import RWKV8, RWKV8Config, State
from heron.models.toys import CountingToy, CountingToyConfig

__all__ = [
    "CountingToy",
    "CountingToyConfig",
    "ROSALM",
    "ROSALMConfig",
    "ROSALMState",
    "RWKV8",
    "RWKV8Config",
    "State",
    "convert",
    "load",
    "save",
]
