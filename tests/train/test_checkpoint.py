import os

import pytest
import torch

from heron.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, previous_path, save_checkpoint


def _payload(value: float):
    return {"format": "heron-train", "step": int(value), "weights": torch.full((64,), value), "nested": {"a": [1, 2]}}


def test_round_trip_and_rotation(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_payload(1.0), path)
    assert not previous_path(path).exists()
    save_checkpoint(_payload(2.0), path)
    assert load_checkpoint(path)["step"] == 2
    assert torch.equal(load_checkpoint(previous_path(path))["weights"], torch.full((64,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.prev"]  # no temp left


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) - 100], "truncated"),
    (lambda data: data[:-200] + bytes([data[-200] ^ 0xFF]) + data[-199:], "corrupt"),
    (lambda data: b"garbage" + data, "not a Heron training checkpoint"),
])
def test_damaged_checkpoint_is_a_clear_error_and_previous_is_intact(tmp_path, damage, message):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_payload(1.0), path)
    save_checkpoint(_payload(2.0), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    if message != "not a Heron training checkpoint":
        assert "previous checkpoint is intact" in str(info.value)
    assert load_checkpoint(previous_path(path))["step"] == 1


def test_damaged_header_and_damaged_previous_are_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_payload(1.0), path)
    save_checkpoint(_payload(2.0), path)
    data = path.read_bytes()
    newline = data.index(b"\n")
    path.write_bytes(data[:newline].rsplit(b" ", 1)[0] + b" xyz" + data[newline:])
    with pytest.raises(CheckpointError, match="damaged header"):
        load_checkpoint(path)
    previous = previous_path(path)
    previous.write_bytes(previous.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="previous checkpoint .* is damaged too"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_payload(1.0), path)
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(_payload(2.0), path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_latest_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    save_checkpoint(_payload(1.0), tmp_path / "checkpoint.pt")
    save_checkpoint(_payload(2.0), tmp_path / "checkpoint.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    # a crash between the two renames leaves only the .prev file
    (tmp_path / "checkpoint.pt").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint.pt.prev"
