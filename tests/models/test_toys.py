"""Counting toys: the batch source, the official layouts and checkpoints, short training."""

import pytest
import torch

from heron.data.counting import SEPARATOR, CountingSource, counting_tokens
from heron.models.toys import CountingToy, CountingToyConfig, evaluate_counting, from_official, load_official


def test_counting_tokens_follow_the_official_sample():
    assert counting_tokens(98, 12) == [10, 9, 8, 10, 9, 9, 10, 1, 0, 0, 10, 1]
    assert counting_tokens(0, 5) == [10, 0, 10, 1, 10]


def test_counting_source_is_deterministic_and_well_formed():
    source = CountingSource(seq_len=127)
    a = source.batch(64, torch.Generator().manual_seed(1))
    b = source.batch(64, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    inputs, targets = a
    assert inputs.shape == targets.shape == (64, 127)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.all(inputs[:, 0] == SEPARATOR)
    starts = source.starts(2000, torch.Generator().manual_seed(2))
    digits = torch.tensor([len(str(n)) for n in starts])
    for count in (1, 2, 3):  # digit count uniform in 1..3
        assert 0.28 < float((digits == count).float().mean()) < 0.39
    assert min(starts) >= 0 and max(starts) <= 999
    batch_starts = source.starts(64, torch.Generator().manual_seed(1))  # the draw batch() made
    for row, start in zip(inputs.tolist(), batch_starts):
        assert row == counting_tokens(start, 128)[:127]


def test_counting_source_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        CountingSource(seq_len=0)
    with pytest.raises(ValueError, match="batch_size"):
        CountingSource().batch(0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        CountingSource().batch(2, 0)


@pytest.mark.parametrize("variant,width,params", [
    ("emb", 64, 2123), ("1bit", 64, 2251), ("1bit_run", 32, 2251), ("4bit", 64, 15115),
])
def test_variants_have_the_official_sizes(variant, width, params):
    # 1bit_run and 4bit: the parameter counts of checkpoints 251016 / 251018.
    model = CountingToy(variant=variant, n_embd=width)
    assert sum(p.numel() for p in model.parameters()) == params
    logits = model(torch.randint(0, 11, (2, 9)))
    assert logits.shape == (2, 9, 11)


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        CountingToyConfig(variant="8bit")
    with pytest.raises(ValueError, match="divisible by 4"):
        CountingToyConfig(variant="4bit", n_embd=30)
    with pytest.raises(ValueError, match="not a counting-toy layout"):
        from_official({"weight": torch.zeros(1)})


def test_stateful_steps_equal_the_whole_sequence():
    torch.manual_seed(0)
    model = CountingToy(variant="4bit", n_embd=16).double()
    tokens = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        whole = model(tokens)
        state, outs = None, []
        for t in range(12):
            out, state = model(tokens[:, t:t + 1], state=state, return_state=True)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole)


@pytest.mark.parametrize("name,variant,width,max_loss,min_accuracy", [
    ("251016_rosa_1bit_run.pth", "1bit_run", 32, 0.45, 0.83),
    ("251018_rosa_4bit_run.pth", "4bit", 64, 0.30, 0.90),
])
def test_official_checkpoints_load_unchanged_and_count(shared, name, variant, width, max_loss, min_accuracy):
    path = shared / "checkpoints" / name
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = load_official(path)
    assert model.config.variant == variant and model.config.n_embd == width
    assert set(model.state_dict()) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(model.state_dict()[key], value.float())
    metrics = evaluate_counting(model, num_samples=128, seed=7)
    assert metrics["loss"] < max_loss
    assert metrics["accuracy"] > min_accuracy


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    model = CountingToy(variant="1bit", n_embd=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    source = CountingSource(seq_len=31)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(25):
        inputs, targets = source.batch(16, generator)
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5
    assert model.rosa_1bit.emb1.grad is not None and model.rosa_1bit.emb1.grad.abs().sum() > 0
