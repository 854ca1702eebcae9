"""heron.models.loading (heron.models.load and friends): official layouts, config inference, our safetensors format, conversion,
and the errors for corrupt or mismatched files."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from heron.models.loading import (
    convert,
    detect_layout,
    infer_rwkv8_config,
    load,
    official_state_dict,
    read_official,
    rwkv8_to_task_keys,
    save,
    task_to_rwkv8_keys,
)

needs_rosa_layer = pytest.mark.skipif(
    importlib.util.find_spec("heron.layers.rosa") is None, reason="heron.layers.rosa (ROSAQKV) not built yet"
)

TASK_FILES = ["251105_reverse_L2", "260123_reverse_L2", "260123_reverse_L2_only_rwkv7", "251024_rosaQKV_L2_digit20"]


@pytest.fixture(scope="module")
def rc00_file(shared, tmp_path_factory):
    """golden_rc00's official weights as a standalone .pth, as an official LM file would be."""
    golden = torch.load(shared / "golden" / "golden_rc00.pt", weights_only=True)
    path = tmp_path_factory.mktemp("rc00") / "rc00.pth"
    torch.save(golden["weights"], path)
    return path


def _official(shared, name):
    return read_official(shared / "checkpoints" / f"{name}.pth")


def test_detect_layout(shared, rc00_file):
    for name in TASK_FILES:
        assert detect_layout(_official(shared, name)) == "task"
    assert detect_layout(_official(shared, "251016_rosa_1bit_run")) == "counting"
    assert detect_layout(_official(shared, "251018_rosa_4bit_run")) == "counting"
    assert detect_layout(read_official(rc00_file)) == "rc00"
    lm = {k: torch.zeros(1) for k in ("emb.weight", "blocks.0.ln0.weight", "blocks.0.rosa.q.weight", "head.weight")}
    assert detect_layout(lm) == "rosa_lm"
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        detect_layout({"foo.weight": torch.zeros(2)})


def test_task_key_mapping_round_trip(shared):
    official = _official(shared, "251105_reverse_L2")
    renamed = task_to_rwkv8_keys(official)
    assert "emb.weight" in renamed and "head.bias" in renamed and "ln_out.weight" in renamed
    assert renamed["blocks.0.ln1.weight"] is official["ln1a.weight"]
    assert renamed["blocks.1.ln3.bias"] is official["ln2c.bias"]
    assert renamed["blocks.0.att.r_k"] is official["rwkv1.r_k"]
    assert renamed["blocks.1.rosa.rosa_qkv.emb"] is official["rosa2.rosa_qkv.emb"]
    assert renamed["blocks.1.ffn.key.weight"] is official["ffn2.key.weight"]
    back = rwkv8_to_task_keys(renamed)
    assert set(back) == set(official) and all(back[k] is official[k] for k in official)
    with pytest.raises(ValueError, match="unexpected key 'rwkvx.foo'"):
        task_to_rwkv8_keys({"rwkvx.foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="blocks.0.ffn.enn.weight"):
        rwkv8_to_task_keys({"blocks.0.ffn.enn.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="blocks.0.ln0.weight"):
        rwkv8_to_task_keys({"blocks.0.ln0.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "name, width, vocab, rank",
    [("251105_reverse_L2", 32, 12, 8), ("260123_reverse_L2", 32, 12, 8), ("251024_rosaQKV_L2_digit20", 128, 13, 16)],
)
def test_infer_task_config(shared, name, width, vocab, rank):
    config = infer_rwkv8_config(task_to_rwkv8_keys(_official(shared, name)))
    assert (config.n_layer, config.n_embd, config.vocab_size, config.head_size) == (2, width, vocab, 16)
    assert config.dim_ffn == 4 * width
    assert (config.lora_rank_decay, config.lora_rank_iclr, config.lora_rank_value, config.lora_rank_gate) == (rank,) * 4
    assert config.rosa == "qkv1" and not config.deep_embed and not config.ln0
    assert config.head_bias and config.layer0_value_lora


def test_infer_rc00_config_and_official_round_trip(shared, rc00_file):
    golden = torch.load(shared / "golden" / "golden_rc00.pt", weights_only=True)
    model = load(rc00_file)
    config = model.config
    expected = golden["config"]
    assert (config.n_layer, config.n_embd, config.vocab_size, config.head_size, config.dim_ffn) == (
        expected["n_layer"], expected["n_embd"], expected["vocab_size"], expected["head_size"], expected["dim_ffn"])
    assert config.lora_rank_decay == config.lora_rank_value == 32
    assert config.deep_embed and config.ln0 and config.rosa is None and not config.head_bias
    assert not config.layer0_value_lora
    back = official_state_dict(model)
    weights = golden["weights"]
    assert set(back) == set(weights)
    for key, value in weights.items():
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
    # the loaded model computes the official function: GPT mode against the float64 reference
    model64 = load(rc00_file, dtype=torch.float64)
    with torch.no_grad():
        logits = model64(golden["tokens"].reshape(1, -1))[0]
    reference = golden["fp64_rnn_logits"].double()
    assert ((logits - reference).norm() / reference.norm()).item() < 1e-6


def test_safetensors_round_trip(tmp_path, rc00_file):
    model = load(rc00_file, dtype=torch.float64)
    path = save(model, tmp_path / "sub" / "model.safetensors")
    again = load(path)
    assert type(again) is type(model) and again.config == model.config
    mine, theirs = model.state_dict(), again.state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) and theirs[k].dtype == torch.float64 for k in mine)
    assert load(path, dtype=torch.float32).emb.weight.dtype == torch.float32


def test_convert_both_ways(tmp_path, rc00_file):
    ours = convert(rc00_file, tmp_path / "rc00.safetensors")
    official = convert(ours, tmp_path / "rc00_back.pth", to="official")
    original, back = read_official(rc00_file), read_official(official)
    assert set(original) == set(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    with pytest.raises(ValueError, match="task"):
        convert(ours, tmp_path / "x.pth", to="task")  # rc00 has ln0 and enn: no task-layout counterpart
    with pytest.raises(ValueError, match="to must be"):
        convert(ours, tmp_path / "x.pth", to="onnx")
    with pytest.raises(ValueError, match="writes safetensors"):
        convert(rc00_file, tmp_path / "x.pth")  # the default, to="heron"
    with pytest.raises(ValueError, match="not safetensors"):
        convert(ours, tmp_path / "x.safetensors", to="official")


def _small_rwkv8(**overrides):
    from heron.models.rwkv8 import RWKV8, RWKV8Config

    torch.manual_seed(0)
    config = RWKV8Config(n_layer=2, n_embd=32, vocab_size=10, head_size=16, **overrides)
    model = RWKV8(config)  # float32, as official files are
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@needs_rosa_layer
def test_convert_to_official_keeps_4bit_rosa_only_under_a_4bit_name(tmp_path):
    model = _small_rwkv8(rosa="qkv4")
    ours = save(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="4bit"):
        convert(ours, tmp_path / "m.pth", to="official")
    assert not (tmp_path / "m.pth").exists()
    back = load(convert(ours, tmp_path / "m_4bit.pth", to="official"))
    assert back.config.rosa == "qkv4"
    tokens = torch.randint(0, 10, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), model(tokens), rtol=0, atol=0)


@needs_rosa_layer
@pytest.mark.parametrize("to", ["official", "task"])
def test_convert_shared_keys_model_to_official(tmp_path, to):
    """rosa_qk_init="shared" has no key path; the official layouts get k = q, x_k = x_q (the same model)."""
    overrides = dict(rosa="qkv1", rosa_qk_init="shared")
    if to == "task":
        overrides.update(deep_embed=False, ln0=False, head_bias=True)
    model = _small_rwkv8(**overrides)
    back = load(convert(save(model, tmp_path / "m.safetensors"), tmp_path / "m.pth", to=to))
    tokens = torch.randint(0, 10, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), model(tokens), rtol=0, atol=0)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _small_rwkv8()
    path = save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save(model, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable like the run's other files


@needs_rosa_layer
@pytest.mark.parametrize("name", TASK_FILES + ["251016_rosa_1bit_run", "251018_rosa_4bit_run"])
def test_task_checkpoints_load_and_convert_back_unchanged(shared, tmp_path, name):
    path = shared / "checkpoints" / f"{name}.pth"
    model = load(path)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in read_official(path).values())
    ours = convert(path, tmp_path / f"{name}.safetensors")
    back = read_official(convert(ours, tmp_path / f"{name}.pth", to="official"))
    original = read_official(path)
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].shape == value.shape and torch.equal(back[key], value), key


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_and_unexpected_keys_are_named(tmp_path, rc00_file):
    weights = read_official(rc00_file)
    broken = dict(weights)
    del broken["blocks.1.att.k_k"]
    broken["blocks.1.att.surprise"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.att.k_k'\].*unexpected keys \['blocks.1.att.surprise'\]"):
        load(path)


def test_shape_mismatch_is_named(tmp_path, rc00_file):
    weights = read_official(rc00_file)
    weights["blocks.1.att.w1"] = torch.zeros(128, 16)  # a different LoRA rank than block 0
    path = tmp_path / "mismatch.pth"
    torch.save(weights, path)
    with pytest.raises(ValueError, match=r"blocks.1.att.w1: file \[128, 16\] vs model \[128, 32\]"):
        load(path)


def test_missing_blocks_and_inference_keys(tmp_path, rc00_file):
    weights = read_official(rc00_file)
    path = tmp_path / "no_ffn_key.pth"
    torch.save({k: v for k, v in weights.items() if not k.startswith("blocks.0.ffn.key")}, path)
    with pytest.raises(ValueError, match="blocks.0.ffn.key.weight"):
        load(path)
    path = tmp_path / "gap.pth"
    torch.save({k.replace("blocks.1.", "blocks.2."): v for k, v in weights.items()}, path)
    with pytest.raises(ValueError, match=r"no keys for blocks \[1\]"):
        load(path)


def test_corrupt_files(tmp_path, rc00_file):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="is not a model file") as failure:
        load(junk)
    assert "weights_only" not in str(failure.value) and "\n" not in str(failure.value)
    from heron.train.checkpoint import save_checkpoint

    training = save_checkpoint({"step": 1}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"training checkpoint .* model file is .*model\.safetensors"):
        load(training)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        load(rc00_file, dtype="float64")
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load(listing)
    good = save(load(rc00_file), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="safetensors"):
        load(truncated)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="rosa_bits"):
        load(rc00_file, rosa_bits=3)
    with pytest.raises(TypeError, match="heron model"):
        save(torch.nn.Linear(2, 2), tmp_path / "linear.safetensors")


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="without heron metadata"):
        load(path)
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"format": "heron", "module": "os", "class": "system",
                                                               "config_class": "x", "config": "{}"})
    with pytest.raises(ValueError, match="only heron"):
        load(path)


def test_convert_command(tmp_path, rc00_file, capsys):
    from heron.cli import main

    destination = tmp_path / "cli.safetensors"
    assert main(["convert", str(rc00_file), str(destination)]) == 0
    assert "RWKV8" in capsys.readouterr().out
    assert load(destination).config.n_embd == 128
    assert main(["convert", str(tmp_path / "absent.pth"), str(destination)]) == 2
    assert "not found" in capsys.readouterr().err
