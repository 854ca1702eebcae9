"""heron.train.grad_health: the clip's gradient norm watched for values that silently stop training."""

import math

import pytest
import torch

from heron.train import distributed
from heron.train.grad_health import HUGE_NORM_RATIO, GradNormMonitor
from heron.train.trainer import train
from tests.train import synthetic


def test_sane_norms_give_no_warning():
    monitor = GradNormMonitor(1.0)
    for value in (0.5, 3.0, 1e4):
        monitor.update(torch.tensor(value))
    assert monitor.values() == (0, 1e4)
    assert monitor.report() is None
    assert monitor.values() == (0, 0.0)  # a report starts a new tally


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_norm_is_reported_with_its_count(bad):
    monitor = GradNormMonitor(1.0)
    for value in (2.0, bad, 3.0, bad):
        monitor.update(torch.tensor(value))
    text = monitor.report()
    assert text is not None and "not finite at 2 of the last 4 step(s)" in text and "rosa_max_gain" in text
    assert monitor.report() is None


def test_huge_norm_is_reported_only_when_it_is_clipped():
    clipped = GradNormMonitor(1.0)
    clipped.update(torch.tensor(10 * HUGE_NORM_RATIO))
    assert "gradient norm up to 1e+13" in clipped.report()
    unclipped = GradNormMonitor(math.inf)  # no clip: AdamW is invariant to the scale
    unclipped.update(torch.tensor(10 * HUGE_NORM_RATIO))
    assert unclipped.report() is None


def test_trainer_warns_when_the_clip_norm_is_not_finite(tmp_path, monkeypatch, capsys):
    original = distributed.ParallelModel.clip_grad_norm

    def overflowing(self, parameters, max_norm):
        original(self, parameters, max_norm)
        return torch.tensor(math.inf)  # what a float32 overflow of the squared norm returns

    monkeypatch.setattr(distributed.ParallelModel, "clip_grad_norm", overflowing)
    train(synthetic.config(tmp_path, steps=4, log_every=2, eval_every=0, clip=1.0))
    err = capsys.readouterr().err
    assert err.count("gradient norm not finite at 2 of the last 2 step(s)") == 2
