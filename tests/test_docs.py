"""Every code block in README.md and docs/ that is marked runnable is executed here.

Mark a block runnable by giving its fence the info string ``python run`` or ``bash run``.
Blocks of one file run in order, from the repository root, in one test. A long block may be
preceded by ``<!-- smoke: COMMAND -->``: the test then runs COMMAND instead (a shortened form of
the same call), so the documentation shows the real command and CI stays fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?:<!--\s*smoke:\s*(?P<smoke>.*?)\s*-->\s*\n)?```(?P<lang>python|bash) run\s*\n(?P<body>.*?)```",
    re.DOTALL,
)


def runnable_blocks(path: Path) -> list[tuple[str, str]]:
    blocks = []
    for match in FENCE.finditer(path.read_text(encoding="utf-8")):
        lang = match["lang"]
        body = match["smoke"] if match["smoke"] else match["body"]
        if match["smoke"]:
            lang = "bash"
        blocks.append((lang, body))
    return blocks


def test_fence_parser_finds_marked_blocks(tmp_path):
    sample = tmp_path / "x.md"
    sample.write_text(
        "text\n```python run\nprint(1)\n```\n```python\nnot run\n```\n"
        "<!-- smoke: echo short -->\n```bash run\nlong command\n```\n"
    )
    assert runnable_blocks(sample) == [("python", "print(1)\n"), ("bash", "echo short")]


DOCS_WITH_BLOCKS = [p for p in DOC_FILES if p.exists() and runnable_blocks(p)]


@pytest.mark.parametrize("path", DOCS_WITH_BLOCKS, ids=lambda p: str(p.relative_to(REPO)))
def test_runnable_blocks(path: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    for index, (lang, body) in enumerate(runnable_blocks(path)):
        if lang == "python":
            command = [sys.executable, "-c", body]
        else:
            command = ["bash", "-euo", "pipefail", "-c", body]
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, (
            f"{path.name} block {index} ({lang}) failed with exit code {result.returncode}\n"
            f"--- block ---\n{body}\n--- stdout ---\n{result.stdout[-3000:]}\n"
            f"--- stderr ---\n{result.stderr[-3000:]}"
        )
