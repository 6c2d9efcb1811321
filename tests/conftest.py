"""Shared fixtures. No test touches the network: the hub is forced offline before anything imports it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The tiny text-to-video model, written once per test session."""
    from k5tune.models.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-t2v")))


@pytest.fixture(scope="session")
def tiny_i2v_model_dir(tmp_path_factory) -> str:
    from k5tune.models.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-i2v"), i2v=True))


@pytest.fixture(scope="session")
def tiny_nabla_dir(tmp_path_factory) -> str:
    """The tiny text-to-video model configured for NABLA attention (as the 10 s checkpoints are)."""
    from k5tune.models.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-nabla"), nabla=True))
