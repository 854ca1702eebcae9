"""Music with ROSA: prompts, generation, rendering and evaluation of folk tunes in ABC notation.

The data (corpus extraction, tokenizer, batch source) is :mod:`heron.data.music`; see
docs/music.md for the workflow and the definitions of the metrics.
"""

from heron.music.analysis import MeterCheck, RepetitionStatistic, meter_check, read_bars, repetition_statistic
from heron.music.evaluate import MusicEvaluation, evaluate_music, validation_bits_per_token, validation_prompts
from heron.music.generate import GeneratedTune, TunePrompt, generate_tunes, known_keys, known_meters, make_prompt
from heron.music.render import RenderedTune, parse_abc, parses, write_tune

__all__ = [
    "MeterCheck", "RepetitionStatistic", "meter_check", "read_bars", "repetition_statistic",
    "MusicEvaluation", "evaluate_music", "validation_bits_per_token", "validation_prompts",
    "GeneratedTune", "TunePrompt", "generate_tunes", "known_keys", "known_meters", "make_prompt",
    "RenderedTune", "parse_abc", "parses", "write_tune",
]
