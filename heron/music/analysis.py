"""Reading the rhythm of ABC text: bar durations, the meter check and the 2-bar repetition statistic.

This is a small ABC duration reader written for the metrics (music21 parses a tune in tens of
milliseconds and splits bars its own way around pickups and repeats; the metrics need exactly
the bars as written). It understands the unit length ``L``, note lengths (``2``, ``/``, ``3/2``,
``//``), broken rhythm (``>``, ``<``, ``>>``), tuplets ``(p:q:r``, chords (the first note gives
the length, times the length written after ``]``), grace notes (no time), rests ``z``/``x``, and
meter or unit changes in field lines and inline fields. ``tests/music`` checks its total
durations against music21 on corpus tunes.

Definitions used by :func:`meter_check` (for generated and validation tunes alike):

- a bar is the music between two bar lines; bars without notes or rests are ignored;
- the first and the last bar of a tune are left out (pickups and endings are often partial);
- so are bars whose left or right bar line carries a repeat (``:``) or a volta number
  (``|1``, ``:|2``, ``[1``), bars of a free meter (``M:none``) and multi-bar rests (``Z``);
- a counted bar matches when its duration equals the meter's exactly (fractions, no rounding).

:func:`repetition_statistic`: the bars' musical content (pitches, lengths, rests, rhythm marks;
not decorations, slurs or spacing) forms 2-bar phrases (bars i, i+1); a phrase *recurs* when the
same two bars appeared earlier in the same tune. Written repeats (``|: :|``) are not expanded, so
this counts repetition the writer spelled out, which is what a model has to produce.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Sequence

from heron.data.music import abc_pieces_with_kind, meter_fraction, normalise_meter, normalise_unit_length

__all__ = [
    "Bar",
    "read_bars",
    "tune_duration",
    "MeterCheck",
    "meter_check",
    "meter_check_of_bars",
    "counted_bars",
    "recurring_phrases",
    "RepetitionStatistic",
    "repetition_statistic",
    "note_length",
]

_CONTENT_KINDS = {"note", "rest", "duration", "broken", "tuplet"}
# default q of a tuplet (p:q: "p notes in the time of q"), for simple meters
_TUPLET_DEFAULT_Q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}


def note_length(piece: str) -> Fraction:
    """The multiplier a length piece gives a note: ``"2"`` -> 2, ``"/"`` -> 1/2, ``"//"`` -> 1/4,
    ``"3/2"`` -> 3/2, ``"/4"`` -> 1/4, ``"3/"`` -> 3/2."""
    match = re.fullmatch(r"(\d*)(/*)(\d*)", piece)
    if match is None or not piece:
        raise ValueError(f"piece must be an ABC note length such as '2', '/', '3/2'; got {piece!r}")
    numerator = int(match.group(1)) if match.group(1) else 1
    slashes = len(match.group(2))
    if match.group(3):
        if slashes == 0:
            raise ValueError(f"piece must be an ABC note length; got {piece!r}")
        denominator = int(match.group(3)) * 2 ** (slashes - 1)
    else:
        denominator = 2**slashes
    if denominator == 0:
        raise ValueError(f"piece: zero denominator in {piece!r}")
    return Fraction(numerator, denominator)


@dataclass
class Bar:
    duration: Fraction = Fraction(0)  # in whole notes
    meter: Fraction | None = None  # the bar length its meter asks for; None = free meter
    left: str = ""  # the bar line before it ("" at the start of the tune)
    right: str = ""  # the bar line after it ("" at the end)
    events: int = 0  # notes, chords and rests
    multibar_rest: bool = False
    content: list[str] = field(default_factory=list)

    @property
    def cut_by_repeat_or_volta(self) -> bool:
        return any(":" in mark or any(ch.isdigit() for ch in mark) for mark in (self.left, self.right))


def _field_value(piece: str) -> tuple[str, str] | None:
    text = piece.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if len(text) >= 2 and text[1] == ":":
        return text[0], text[2:].strip()
    return None


def read_bars(text: str) -> list[Bar]:
    """The bars of one ABC tune (headers included in ``text``), in order, empty bars dropped.
    Unreadable meter or length fields leave the previous values in force (generated text may
    hold anything)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be the str of an ABC tune, got {type(text).__name__}")
    meter: Fraction | None = None
    unit = Fraction(1, 8)
    unit_given = False
    bars: list[Bar] = []
    current = Bar()
    durations: list[Fraction] = []  # events of the current bar, editable by later length pieces
    length_target: int | None = None  # index in `durations` a following length piece applies to
    broken_next: Fraction | None = None
    tuplet_left = 0
    tuplet_factor = Fraction(1)
    in_chord = False
    chord_has_note = False
    in_grace = False

    def close(right: str) -> None:
        nonlocal current, durations, length_target
        current.right = right
        current.duration = sum(durations, Fraction(0))
        if current.events or current.multibar_rest:
            bars.append(current)
        current = Bar(meter=meter, left=right)
        durations = []
        length_target = None

    def new_event() -> None:
        nonlocal length_target, broken_next, tuplet_left
        duration = unit
        if tuplet_left > 0:
            duration *= tuplet_factor
            tuplet_left -= 1
        if broken_next is not None:
            duration *= broken_next
            broken_next = None
        durations.append(duration)
        current.events += 1
        length_target = len(durations) - 1

    for kind, piece in abc_pieces_with_kind(text):
        if kind in _CONTENT_KINDS and not in_grace:
            current.content.append(piece)
        if kind in ("header", "field"):
            parsed = _field_value(piece)
            length_target = None
            if parsed is None:
                continue
            name, value = parsed
            try:
                if name == "M":
                    meter = meter_fraction(normalise_meter(value))
                    current.meter = meter
                    if not unit_given:
                        unit = Fraction(1, 16) if meter is not None and meter < Fraction(3, 4) else Fraction(1, 8)
                elif name == "L":
                    numerator, denominator = normalise_unit_length(value).split("/")
                    unit = Fraction(int(numerator), int(denominator))
                    unit_given = True
            except ValueError:
                pass
            continue
        if in_grace:
            if piece == "}":
                in_grace = False
            continue
        if kind == "note":
            if in_chord:
                if chord_has_note:
                    length_target = None  # only the first note of a chord gives its length
                    continue
                chord_has_note = True
            new_event()
        elif kind == "rest":
            if piece in "ZX":
                current.multibar_rest = True
                length_target = None
            else:
                new_event()
        elif kind == "duration":
            if length_target is not None:
                try:
                    durations[length_target] *= note_length(piece)
                except ValueError:
                    pass
                length_target = None
        elif kind == "broken":
            if durations:
                dots = len(piece)
                short = Fraction(1, 2**dots)
                long = 2 - short
                durations[-1] *= long if piece[0] == ">" else short
                broken_next = short if piece[0] == ">" else long
            length_target = None
        elif kind == "tuplet":
            numbers = piece[1:].split(":")
            p = int(numbers[0])
            q = int(numbers[1]) if len(numbers) > 1 and numbers[1] else _TUPLET_DEFAULT_Q.get(p, 2)
            r = int(numbers[2]) if len(numbers) > 2 and numbers[2] else p
            if p > 0:
                tuplet_factor = Fraction(q, p)
                tuplet_left = r
            length_target = None
        elif kind == "bar":
            close(piece)
        elif piece == "[":
            in_chord, chord_has_note = True, False
            current.content.append(piece)
            length_target = None
        elif piece == "]" and in_chord:
            in_chord = False
            current.content.append(piece)
            # (a bar line inside a malformed chord may have closed the bar holding its note)
            length_target = len(durations) - 1 if chord_has_note and durations else None
        elif piece == "{":
            in_grace = True
            length_target = None
        elif kind == "space" or piece in "\n\\-()":
            # a tie or slur keeps the note it follows; a length never comes after them
            length_target = None
        else:
            length_target = None
    close("")
    return bars


def tune_duration(text: str) -> Fraction:
    """Total written duration of a tune in whole notes (repeats not expanded)."""
    return sum((bar.duration for bar in read_bars(text)), Fraction(0))


@dataclass(frozen=True)
class MeterCheck:
    matched: int  # counted bars whose duration equals the meter's
    counted: int  # bars the check applies to
    tunes: int

    @property
    def share(self) -> float:
        return self.matched / self.counted if self.counted else math.nan


def counted_bars(bars: Sequence[Bar]) -> list[Bar]:
    """The bars the meter check looks at (see the module docstring)."""
    return [
        bar
        for bar in bars[1:-1]
        if bar.meter is not None and not bar.multibar_rest and not bar.cut_by_repeat_or_volta
    ]


def meter_check(texts: Iterable[str]) -> MeterCheck:
    """Pooled over all tunes: the share of counted bars whose duration equals the meter's."""
    return meter_check_of_bars(read_bars(text) for text in texts)


def meter_check_of_bars(tunes_bars: Iterable[Sequence[Bar]]) -> MeterCheck:
    """:func:`meter_check` from bars already read (one list of bars per tune)."""
    matched = counted = tunes = 0
    for bars in tunes_bars:
        tunes += 1
        for bar in counted_bars(bars):
            counted += 1
            matched += bar.duration == bar.meter
    return MeterCheck(matched, counted, tunes)


@dataclass(frozen=True)
class RepetitionStatistic:
    recurring: int  # 2-bar phrases equal to an earlier phrase of the same tune
    phrases: int  # 2-bar phrases in all tunes
    tunes: int
    mean_per_tune: float  # mean over tunes with at least one phrase of their own share

    @property
    def share(self) -> float:
        return self.recurring / self.phrases if self.phrases else math.nan


def recurring_phrases(text: str | Sequence[Bar]) -> tuple[int, int]:
    """``(recurring, phrases)`` for one tune (its text, or its bars already read)."""
    bars = read_bars(text) if isinstance(text, str) else text
    contents = [tuple(bar.content) for bar in bars]
    seen: set[tuple] = set()
    recurring = 0
    phrases = max(len(contents) - 1, 0)
    for index in range(phrases):
        phrase = (contents[index], contents[index + 1])
        if phrase in seen:
            recurring += 1
        else:
            seen.add(phrase)
    return recurring, phrases


def repetition_statistic(texts: Iterable[str | Sequence[Bar]]) -> RepetitionStatistic:
    """Pooled over tunes (texts, or lists of bars already read): the share of 2-bar phrases
    that recur within their tune."""
    recurring = phrases = tunes = 0
    shares = []
    for text in texts:
        tunes += 1
        tune_recurring, tune_phrases = recurring_phrases(text)
        recurring += tune_recurring
        phrases += tune_phrases
        if tune_phrases:
            shares.append(tune_recurring / tune_phrases)
    mean = sum(shares) / len(shares) if shares else math.nan
    return RepetitionStatistic(recurring, phrases, tunes, mean)
