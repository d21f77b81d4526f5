"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from server_fixtures import write_models

from server.repository import ModelRepository


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (use with ``pytestmark``): on a small shared
    CPU, torch's thread pool spinning beside the server's, reader's and writer's threads
    slows every batch several times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder of random-weights model files (``server_fixtures.MODEL_CONFIGS``)."""
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def repository(model_dir) -> ModelRepository:
    """The models of ``model_dir`` loaded on the CPU, ``m`` the default."""
    return ModelRepository.from_folder(model_dir, default="m", device="cpu")
