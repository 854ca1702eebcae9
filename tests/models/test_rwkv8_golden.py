"""Parity with the official RWKV-8 rc00 code on ``golden/golden_rc00.pt`` (see golden/README.md).

Every comparison is against the ``fp64_*`` keys (the official RNN mode run in float64 on the CPU).
Tolerances (relative L2): float64 1e-6 on logits, 1e-5 on the state (the official WKV state
arithmetic stays float32); float32 5e-5; on GPU float16 3e-3 and bfloat16 2e-2.
"""

from __future__ import annotations

import pytest
import torch

from heron.models.rwkv8 import RWKV8, RWKV8Config, State

from .test_rwkv8 import relative_l2, run_rnn


def load_golden(shared):
    return torch.load(shared / "golden" / "golden_rc00.pt", map_location="cpu", weights_only=True)


def golden_model(golden, dtype, device="cpu") -> RWKV8:
    cfg = golden["config"]
    rank = golden["weights"]["blocks.0.att.w1"].shape[1]
    config = RWKV8Config(n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], vocab_size=cfg["vocab_size"],
                         head_size=cfg["head_size"], dim_ffn=cfg["dim_ffn"], lora_rank_decay=rank,
                         lora_rank_iclr=rank, lora_rank_value=rank, lora_rank_gate=rank)
    model = RWKV8(config)
    model.load_state_dict(golden["weights"], strict=True)  # official keys, unchanged
    return model.to(device=device, dtype=dtype).eval()


def check_against_golden(golden, dtype, device, logits_tol, state_tol):
    model = golden_model(golden, dtype, device)
    tokens = golden["tokens"][None].to(device)
    more = golden["more_tokens"][None].to(device)
    reference_logits = golden["fp64_rnn_logits"]
    reference_state = golden["fp64_rnn_state"]
    with torch.no_grad():
        gpt_logits, gpt_state = model(tokens, return_state=True)
        rnn_logits, rnn_state = run_rnn(model, tokens)
        more_gpt, _ = model(more, gpt_state, return_state=True)
        more_rnn, _ = run_rnn(model, more, gpt_state)
    errors = {
        "gpt": relative_l2(gpt_logits[0].cpu(), reference_logits),
        "rnn": relative_l2(rnn_logits[0].cpu(), reference_logits),
        "gpt_then_rnn": relative_l2(more_rnn[0].cpu(), golden["fp64_more_logits"]),
        "gpt_then_gpt": relative_l2(more_gpt[0].cpu(), golden["fp64_more_logits"]),
    }
    for name, error in errors.items():
        assert error <= logits_tol, f"{name} logits: relative L2 {error:.3g} > {logits_tol} ({dtype}, {device})"
    for mode, state in (("gpt", gpt_state), ("rnn", rnn_state)):
        for index, (ours, theirs) in enumerate(zip(state.to_official(), reference_state)):
            error = relative_l2(ours.cpu(), theirs)
            assert error <= state_tol, f"{mode} state entry {index}: relative L2 {error:.3g} > {state_tol}"
    return errors


def test_golden_rc00_float64(shared):
    golden = load_golden(shared)
    errors = check_against_golden(golden, torch.float64, "cpu", logits_tol=1e-6, state_tol=1e-5)
    assert errors["gpt"] > 0  # the official state arithmetic is fp32: an exact match would be suspicious


def test_golden_rc00_float32(shared):
    check_against_golden(load_golden(shared), torch.float32, "cpu", logits_tol=5e-5, state_tol=5e-5)


def test_golden_rc00_state_resumes_from_official_flat_list(shared):
    """Continue from the official state list (GPT-mode prefill done by the official code)."""
    golden = load_golden(shared)
    model = golden_model(golden, torch.float64)
    state = State.from_official(golden["fp64_rnn_state"], dtype=torch.float64)
    with torch.no_grad():
        logits, _ = run_rnn(model, golden["more_tokens"][None], state)
    assert relative_l2(logits[0], golden["fp64_more_logits"]) <= 1e-6


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_golden_rc00_cpu_reduced_precision(shared, dtype, tolerance):
    """The GPU bounds also hold for 16-bit weights and activations on the CPU (measured: float16
    1.3e-3, bfloat16 1.0e-2), so the reduced-precision paths are checked without a GPU."""
    check_against_golden(load_golden(shared), dtype, "cpu", logits_tol=tolerance, state_tol=3 * tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_golden_rc00_gpu_reduced_precision(shared, dtype, tolerance):
    # the spec bounds the logits; the state entries (x_prev rounded to 16 bits) get 3x that slack
    errors = check_against_golden(load_golden(shared), dtype, "cuda", logits_tol=tolerance, state_tol=3 * tolerance)
    print(f"{dtype} relative L2 vs fp64: {errors}")


@pytest.mark.gpu
def test_golden_rc00_gpu_float32(shared):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        check_against_golden(load_golden(shared), torch.float32, "cuda", logits_tol=5e-5, state_tol=5e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
