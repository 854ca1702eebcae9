"""Heron: RWKV-8 "Heron" with ROSA for PyTorch — training, generation and fast kernels."""

__version__ = "0.1.0"
