import pytest
import torch

from heron.generate.sampling import SamplingOptions, filtered_probabilities, sample_next, sample_next_reference


def _options_grid():
    for temperature in (0.0, 0.3, 1.0, 2.5):
        for top_k in (0, 1, 3, 50):
            for top_p in (1.0, 0.9, 0.5, 0.05):
                yield SamplingOptions(temperature=temperature, top_p=top_p, top_k=top_k)


def test_fast_path_matches_reference_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    for options in _options_grid():
        logits = torch.randn(16, 20, generator=generator, dtype=torch.float64) * 3
        uniforms = torch.rand(16, generator=generator, dtype=torch.float64)
        assert torch.equal(sample_next(logits, options, uniforms), sample_next_reference(logits, options, uniforms))


def test_fast_path_matches_reference_on_adversarial_logits():
    # ties, -inf entries, a one-token vocabulary, huge magnitudes, float32 input
    cases = [
        torch.zeros(4, 7),
        torch.tensor([[1.0, 1.0, 0.0, 1.0, float("-inf")]] * 3),
        torch.tensor([[5.0]]),
        torch.tensor([[1e4, -1e4, 1e4 - 1, 0.0]]),
        torch.tensor([[0.0, 0.0, 0.0, 0.0]]).float(),
    ]
    generator = torch.Generator().manual_seed(1)
    for logits in cases:
        for options in _options_grid():
            uniforms = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64)
            fast = sample_next(logits, options, uniforms)
            assert torch.equal(fast, sample_next_reference(logits, options, uniforms)), (logits, options)
            assert torch.isfinite(logits.gather(1, fast[:, None])).all()


def test_greedy_picks_the_first_maximum():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    options = SamplingOptions(temperature=0.0, top_k=2, top_p=0.1)
    assert sample_next(logits, options).tolist() == [1, 0]


def test_top_k_and_top_p_limit_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64))
    top_k = filtered_probabilities(logits, SamplingOptions(top_k=2))
    assert torch.allclose(top_k, torch.tensor([[0.5, 0.2, 0, 0, 0]], dtype=torch.float64) / 0.7)
    top_p = filtered_probabilities(logits, SamplingOptions(top_p=0.8))
    # 0.5 + 0.2 = 0.7 < 0.8, so the third token is needed; the fourth is not
    assert (top_p[0] > 0).tolist() == [True, True, True, False, False]
    tiny = filtered_probabilities(logits, SamplingOptions(top_p=1e-6))
    assert (tiny[0] > 0).tolist() == [True, False, False, False, False]


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    cold = filtered_probabilities(logits, SamplingOptions(temperature=0.25))
    hot = filtered_probabilities(logits, SamplingOptions(temperature=4.0))
    assert cold[0, 0] > 0.97 and hot[0, 0] < 0.45


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)).expand(20000, 3)
    uniforms = torch.rand(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    counts = torch.bincount(sample_next(logits, SamplingOptions(), uniforms), minlength=3).double() / 20000
    assert torch.allclose(counts, torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), atol=0.015)


def test_sampling_never_picks_excluded_tokens():
    logits = torch.tensor([[10.0, 9.0, -50.0, 8.0]]).expand(1000, 4)
    uniforms = torch.linspace(0, 1 - 1e-12, 1000, dtype=torch.float64)
    chosen = sample_next(logits, SamplingOptions(top_k=2), uniforms)
    assert set(chosen.tolist()) == {0, 1}


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.0), "top_k"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingOptions(**kwargs)


def test_bad_inputs():
    options = SamplingOptions()
    with pytest.raises(TypeError, match="logits"):
        sample_next(torch.tensor([[1, 2]]), options, torch.rand(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="logits"):
        sample_next(torch.zeros(3), options, torch.rand(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="uniforms"):
        sample_next(torch.zeros(2, 3), options)
    with pytest.raises(ValueError, match="uniforms"):
        sample_next(torch.zeros(2, 3), options, torch.rand(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="uniforms"):
        sample_next(torch.zeros(1, 3), options, torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="uniforms"):
        sample_next(torch.zeros(1, 3), options, torch.tensor([float("nan")], dtype=torch.float64))
    # a diverged model: a row with no finite logit is an error, not token V - 1
    for bad_row in ([float("nan")] * 3, [float("-inf")] * 3, [0.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
            sample_next(torch.tensor([[0.0, 1.0, 2.0], bad_row]), options, torch.full((2,), 0.5, dtype=torch.float64))
    with pytest.raises(TypeError, match="options"):
        sample_next(torch.zeros(1, 3), {"temperature": 0})


def test_greedy_refuses_rows_without_a_usable_logit():
    """Greedy decoding of a diverged model raises like sampling does, instead of token 0."""
    greedy = SamplingOptions(temperature=0)
    for bad_row in ([float("nan"), 1.0, 0.0], [float("-inf")] * 3, [0.0, float("nan"), 1.0], [float("nan")] * 3):
        with pytest.raises(ValueError, match=r"row\(s\) \[1\] give no finite distribution"):
            sample_next(torch.tensor([[0.0, 1.0, 2.0], bad_row]), greedy)
    with pytest.raises(ValueError, match="no finite distribution"):
        sample_next(torch.tensor([[float("nan"), 1.0]]), greedy)
    # -inf entries beside finite ones are masked tokens, not a divergence
    assert sample_next(torch.tensor([[float("-inf"), 1.0, 3.0]]), greedy).tolist() == [2]
