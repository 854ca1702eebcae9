"""heron.ops._build: the native-extension cache."""

from pathlib import Path

from heron.ops import _build


def _checkout(root: Path, body: str) -> Path:
    (root / "csrc").mkdir(parents=True)
    (root / "csrc" / "helper.h").write_text("inline int helper() { return 1; }\n")
    source = root / "csrc" / "ext.cpp"
    source.write_text(f'#include "helper.h"\n{body}\n')
    return source


def test_two_checkouts_with_the_same_sources_build_from_the_same_files(tmp_path):
    """ninja keys its rebuilds on absolute source paths: the staged copies must not depend on the
    checkout, or two checkouts keep rebuilding each other's extension."""
    first = _checkout(tmp_path / "a", "int f() { return helper(); }")
    second = _checkout(tmp_path / "b", "int f() { return helper(); }")
    assert _build._source_digest([first], []) == _build._source_digest([second], [])
    folder = tmp_path / "cache" / "heron_ext_key" / "src"
    staged = _build._stage_sources([first], folder)
    stamp = staged[0].stat().st_mtime_ns
    assert _build._stage_sources([second], folder) == staged
    assert staged[0].stat().st_mtime_ns == stamp  # not rewritten: ninja sees nothing new
    assert sorted(p.name for p in folder.iterdir()) == ["ext.cpp", "helper.h"]  # with the header it includes
    assert (folder / "helper.h").read_text() == (tmp_path / "a" / "csrc" / "helper.h").read_text()


def test_a_changed_header_changes_the_cache_key(tmp_path):
    source = _checkout(tmp_path / "a", "int f() { return helper(); }")
    before = _build._source_digest([source], [])
    (tmp_path / "a" / "csrc" / "helper.h").write_text("inline int helper() { return 2; }\n")
    assert _build._source_digest([source], []) != before
