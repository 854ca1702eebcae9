"""Heron's layers: the ROSA layers and the RWKV-8 time-mix and channel-mix.

All sequence-mixing layers take ``[B, T, C]`` activations and an optional state
(``layer(x, ..., state=None, return_state=False)``); ``T = 1`` is the RNN-mode step.
"""

from heron.layers.channel_mix import ChannelMix, ChannelMixState
from heron.layers.rosa import EmbROSA, ROSABits, ROSAQKV, ROSAQKVOp, ROSAState
from heron.layers.time_mix import TimeMix, TimeMixState

__all__ = [
    "ChannelMix",
    "ChannelMixState",
    "EmbROSA",
    "ROSABits",
    "ROSAQKV",
    "ROSAQKVOp",
    "ROSAState",
    "TimeMix",
    "TimeMixState",
]
