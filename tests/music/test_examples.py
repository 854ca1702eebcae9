"""Whatever music examples are committed must be usable: every .abc parses with music21."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.music.render import parses

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "music"


def test_every_committed_abc_file_parses():
    files = sorted(EXAMPLES.rglob("*.abc"))
    if not files:
        pytest.skip("no sample tunes committed under examples/music yet")
    failing = [str(path.relative_to(EXAMPLES)) for path in files if not parses(path.read_text())]
    assert not failing, f"music21 cannot parse {failing}"
