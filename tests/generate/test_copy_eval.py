import pytest
import torch

from heron.generate.copy_eval import copy_eval, copy_prompts
from tests.generate.toy_model import ToyROSAModel


def _copier(vocab_size: int) -> ToyROSAModel:
    """Predicts exactly what token ROSA retrieves: the ideal copier the protocol looks for."""
    model = ToyROSAModel(vocab_size=vocab_size, n_embd=vocab_size)
    with torch.no_grad():
        model.emb.zero_()
        model.rosa_emb.copy_(torch.eye(vocab_size, dtype=torch.float64))
        model.head.copy_(torch.eye(vocab_size, dtype=torch.float64))
    return model


def test_prompts_follow_the_protocol():
    pool = torch.tensor([11, 22, 33, 44, 55])
    prompts, expected = copy_prompts(pool, 6, 10, 3, torch.Generator().manual_seed(0))
    assert prompts.shape == (6, 13) and expected.shape == (6, 7)
    assert torch.equal(prompts[:, 10:], prompts[:, :3])
    assert torch.equal(expected, prompts[:, 3:10])
    assert set(prompts.unique().tolist()) <= set(pool.tolist())


def test_an_ideal_copier_scores_near_100_percent():
    pool = torch.arange(1, 60)
    result = copy_eval(_copier(60), pool, trials=20, length=24, cue=4, seed=1, batch_size=8)
    # ROSA follows the longest earlier match; with 59 symbols a repeated cue is rare
    assert result.token_accuracy >= 0.95
    assert result.trials == 20 and len(result.per_trial_accuracy) == 20
    assert "copied" in result.summary()


def test_a_model_that_cannot_copy_scores_near_chance():
    model = ToyROSAModel(vocab_size=60)
    with torch.no_grad():
        model.rosa_emb.zero_()  # no access to the retrieved token
    result = copy_eval(model, torch.arange(1, 60), trials=10, length=24, cue=4, seed=1)
    assert result.token_accuracy < 0.3
    assert result.exact_share == 0.0


def test_incremental_and_full_recompute_agree():
    pool = torch.arange(1, 20)
    model = ToyROSAModel(vocab_size=20, seed=4)
    fast = copy_eval(model, pool, trials=6, length=16, cue=4, seed=2)
    slow = copy_eval(model, pool, trials=6, length=16, cue=4, seed=2, incremental=False)
    assert fast.per_trial_accuracy == slow.per_trial_accuracy


def test_bad_arguments():
    model = ToyROSAModel(vocab_size=20)
    with pytest.raises(ValueError, match="cue"):
        copy_eval(model, torch.arange(1, 5), length=8, cue=8)
    with pytest.raises(ValueError, match="pool"):
        copy_eval(model, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="pool"):
        copy_eval(model, torch.tensor([1, 25]))
    with pytest.raises(ValueError, match="trials"):
        copy_eval(model, torch.arange(1, 5), trials=0)


def test_first_error_positions_and_recovery_share():
    from heron.generate.copy_eval import CopyEvalResult

    model = ToyROSAModel(vocab_size=20, seed=4)
    pool = torch.arange(1, 20)
    result = copy_eval(model, pool, trials=8, length=16, cue=4, seed=2)
    prompts, expected = copy_prompts(pool, 8, 16, 4, torch.Generator().manual_seed(2))
    from heron.generate.loop import generate

    produced = torch.tensor(generate(model, prompts, 12, temperature=0.0).tokens)
    for trial in range(8):
        wrong = (produced[trial] != expected[trial]).nonzero().flatten().tolist()
        assert result.per_trial_first_error[trial] == (wrong[0] if wrong else 12)
    # by hand: one trial exact, one wrong from token 2 on with 3 of the 9 later tokens right
    by_hand = CopyEvalResult(token_accuracy=0.0, exact_share=0.5, trials=2, length=16, cue=4,
                             per_trial_accuracy=[1.0, 5 / 12], per_trial_first_error=[12, 2])
    assert by_hand.tokens_after_first_error() == pytest.approx(3 / 9)
    assert "first mistake at token 2" in by_hand.summary()
    exact = CopyEvalResult(1.0, 1.0, 1, 16, 4, [1.0], [12])
    assert exact.tokens_after_first_error() == 0.0 and "first mistake" not in exact.summary()


def test_first_true_index_of_empty_rows_and_bad_masks():
    from heron.generate.copy_eval import first_true_index

    assert first_true_index(torch.zeros(2, 0, dtype=torch.bool)).tolist() == [0, 0]
    assert first_true_index(torch.zeros(0, 3, dtype=torch.bool)).tolist() == []
    assert first_true_index(torch.tensor([[False, True, True], [False] * 3])).tolist() == [1, 3]
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        first_true_index(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="mask"):
        first_true_index([[True]])
    with pytest.raises(ValueError, match=r"mask: expected shape \[N, L\]"):
        first_true_index(torch.zeros(3, dtype=torch.bool))
