"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
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
def one_training_thread():
    """One intra-op thread for every training run of a module (use with ``pytestmark``): on
    64-pixel images thread hand-offs cost more than they save (several times slower on a
    busy machine), and bitwise comparisons of two runs need the same thread count.
    ``OMP_NUM_THREADS`` tells the trainer to leave the count alone."""
    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if variable is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = variable


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder of random-weights model files (``server_fixtures.MODEL_CONFIGS``)."""
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def repository(model_dir) -> ModelRepository:
    """The models of ``model_dir`` loaded on the CPU, ``m`` the default."""
    return ModelRepository.from_folder(model_dir, default="m", device="cpu")
