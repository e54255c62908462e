"""Shared fixtures: a random-weight checkpoint of the real layout, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

from orpheus_local.config import EngineConfig
from orpheus_local.weights.demo import build_demo_checkpoint

# One thread: the tests often share the cores with a server subprocess, and oversubscribed torch
# threads run an order of magnitude slower than one.
torch.set_num_threads(1)

TEST_BACKEND = os.environ.get("ORPHEUS_TEST_BACKEND", "engine")


@pytest.fixture(scope="session", autouse=True)
def state_dir_outside_home(tmp_path_factory):
    """Every server the tests start, in process or not, keeps its v2 job store in a temporary
    directory, never under the home directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORPHEUS_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory):
    """(model_dir, snac_dir) of the tiny demo checkpoint, saved in the Hugging Face layout."""
    return build_demo_checkpoint(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="session")
def demo_config(demo_dirs) -> EngineConfig:
    model_dir, snac_dir = demo_dirs
    return EngineConfig(model=str(model_dir), snac=str(snac_dir), device="cpu", backend=TEST_BACKEND, max_queue=16)


@pytest.fixture(scope="session")
def synthesizer(demo_config):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    synth = Synthesizer.load(demo_config)
    yield synth
    synth.close()
