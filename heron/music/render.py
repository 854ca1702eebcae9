"""Writing tunes: ``.abc`` text, ``.mid`` through music21, a piano-roll ``.png`` through matplotlib.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend
switch), so rendering works on machines without a display and leaves other plotting alone.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ParsedTune", "parse_abc", "parses", "write_midi", "write_piano_roll", "write_tune", "RenderedTune"]


@dataclass
class ParsedTune:
    score: object  # music21.stream.Score
    notes: list[tuple[float, float, int]]  # (offset, length in quarter notes, MIDI pitch); graces left out


def parse_abc(text: str) -> ParsedTune:
    """Parse one ABC tune with music21. Raises ``ValueError`` when music21 fails or finds no note."""
    if not isinstance(text, str):
        raise TypeError(f"text must be the str of an ABC tune, got {type(text).__name__}")
    import music21

    try:
        # music21 warns about every unusual ABC construct, through `warnings` and by writing
        # straight to sys.stderr; generated tunes are full of them
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            score = music21.converter.parse(text, format="abc")
    except Exception as exc:  # music21 raises many unrelated exception types on bad input
        raise ValueError(f"text: music21 cannot parse this ABC: {type(exc).__name__}: {exc}") from None
    if isinstance(score, music21.stream.Opus):
        # a second `X:` field inside the text (a model that starts a new tune without the
        # separator): music21 reads several tunes, and its MIDI export would write one file per
        # tune (`stem-1.mid`, ...), so such a text is not one tune
        scores = list(score.scores)
        if len(scores) != 1:
            raise ValueError(f"text: holds {len(scores)} tunes (X: fields), expected one")
        score = scores[0]
    notes: list[tuple[float, float, int]] = []
    for element in score.flatten().notes:
        if element.duration.isGrace:
            continue
        offset = float(element.getOffsetInHierarchy(score)) if hasattr(element, "getOffsetInHierarchy") else float(element.offset)
        for pitch in element.pitches:
            notes.append((offset, float(element.duration.quarterLength), int(pitch.midi)))
    if not notes:
        raise ValueError("text: music21 parsed the ABC but found no notes")
    return ParsedTune(score, notes)


def parses(text: str) -> bool:
    """Whether music21 parses ``text`` without error and finds at least one note."""
    try:
        parse_abc(text)
    except ValueError:
        return False
    return True


def write_midi(parsed: ParsedTune, path: Path | str) -> Path:
    """MIDI of the score. music21's export of a parsed score fails on a few odd bar structures
    ("TimeSignature already found in this Stream"); the notes alone are then written instead."""
    import music21

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed.score.write("midi", fp=str(path))
        except Exception:
            notes_only = music21.stream.Stream()
            for offset, length, pitch in parsed.notes:
                notes_only.insert(offset, music21.note.Note(pitch, quarterLength=length))
            notes_only.write("midi", fp=str(path))
    return path


def write_piano_roll(parsed: ParsedTune, path: Path | str, title: str = "") -> Path:
    """Piano roll: time in quarter notes across, MIDI pitch up, one bar per note."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    end = max(offset + length for offset, length, _ in parsed.notes)
    lowest = min(pitch for _, _, pitch in parsed.notes)
    highest = max(pitch for _, _, pitch in parsed.notes)
    figure = Figure(figsize=(max(6.0, min(24.0, end / 4)), 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for offset, length, pitch in parsed.notes:
        axes.broken_barh([(offset, max(length, 0.05))], (pitch - 0.4, 0.8), facecolors="tab:blue", edgecolors="navy", linewidth=0.4)
    axes.set_xlim(0, end)
    axes.set_ylim(lowest - 1.5, highest + 1.5)
    axes.set_xlabel("time (quarter notes)")
    axes.set_ylabel("MIDI pitch")
    axes.grid(True, axis="x", linewidth=0.3)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return path


@dataclass
class RenderedTune:
    abc: Path
    midi: Path | None  # None when the tune does not parse or music21 cannot export it
    png: Path | None
    parsed: bool
    error: str = ""


def write_tune(text: str, out_dir: Path | str, stem: str, *, title: str = "") -> RenderedTune:
    """Write ``<stem>.abc`` always, and ``<stem>.png`` and ``<stem>.mid`` when music21 parses it
    (the MIDI export of music21 fails on a few scores its parser accepts: ``midi`` is then None
    and ``error`` says why)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    abc_path = out_dir / f"{stem}.abc"
    abc_path.write_text(text if text.endswith("\n") else text + "\n")
    try:
        parsed = parse_abc(text)
    except ValueError as exc:
        return RenderedTune(abc_path, None, None, False, str(exc))
    png_path = write_piano_roll(parsed, out_dir / f"{stem}.png", title or stem)
    midi_path: Path | None = out_dir / f"{stem}.mid"
    error = ""
    try:
        write_midi(parsed, midi_path)
    except Exception as exc:  # music21's MIDI export fails on some scores its parser accepts
        midi_path.unlink(missing_ok=True)
        midi_path, error = None, f"music21 cannot write MIDI: {type(exc).__name__}: {exc}"
    return RenderedTune(abc_path, midi_path, png_path, True, error)
