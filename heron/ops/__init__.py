"""Heron's primitives: ROSA and WKV7, each with a reference, a CPU and a CUDA implementation."""

from .rosa import rosa, rosa_qkv
from .wkv7 import wkv7

__all__ = ["rosa", "rosa_qkv", "wkv7"]
