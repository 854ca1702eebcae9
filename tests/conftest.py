import os
from pathlib import Path

# Triton kernels take CPU tensors only in Triton's interpreter, chosen when triton is first
# imported (torch imports it): on a machine without an NVIDIA GPU the tests run them there.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# CI and developers keep the project's reference material in ../shared beside the checkout.
SHARED = Path(os.environ.get("HERON_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared reference material not found at {SHARED}")
    return SHARED


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
