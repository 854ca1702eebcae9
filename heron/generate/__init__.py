"""Generation: sampling rules, the prefill + RNN-mode loop, and the copy-ability evaluation."""

from heron.generate.copy_eval import CopyEvalResult, copy_eval, copy_prompts
from heron.generate.loop import GenerationResult, generate
from heron.generate.sampling import SamplingOptions, filtered_probabilities, sample_next, sample_next_reference

__all__ = [
    "CopyEvalResult",
    "GenerationResult",
    "SamplingOptions",
    "copy_eval",
    "copy_prompts",
    "filtered_probabilities",
    "generate",
    "sample_next",
    "sample_next_reference",
]
