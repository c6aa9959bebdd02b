"""Runs the explanation tests share, each trained once per session on a small real subset: a CNN on
scikit-learn's digits, a BiLSTM on SST-2 sentences, a character GPT on tiny Shakespeare, a CNN on MNIST."""

from __future__ import annotations

import pytest
import torch

from strata.api import load_run, train

_RUNS: dict = {}


def _once(name: str, tmp_path_factory, cfg: dict):
    """The run `name`, trained on first use (single thread) and loaded for evaluation after."""
    if name not in _RUNS:
        torch.set_num_threads(1)
        result = train(cfg, run_dir=tmp_path_factory.mktemp("runs") / name)
        _RUNS[name] = load_run(result.run_dir)
    return _RUNS[name]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The CNN on 8x8 digits, 5 epochs (about 20 s on one core)."""
    return _once("digits", tmp_path_factory, {
        "name": "explain-digits", "data": {"name": "digits", "batch_size": 32}, "model": {"name": "cnn"},
        "task": {"name": "classify"}, "trainer": {"max_epochs": 5, "progress": "off", "seed": 0}})


@pytest.fixture(scope="session")
def test_digits():
    from strata.config import DataConfig
    from strata.data import load_data

    return load_data(DataConfig(name="digits")).test.tensors["x"][:100]  # (100, 1, 8, 8) in [0, 1]


@pytest.fixture
def sst2_run(mirror, tmp_path_factory):
    """A BiLSTM on 2,000 SST-2 phrases, 2 epochs (~0.6 on dev, majority 0.51)."""
    return _once("sst2", tmp_path_factory, {
        "name": "explain-sst2",
        "data": {"name": "sst2", "batch_size": 32, "limit": 2000, "vocab_size": 800, "val_fraction": 0.01},
        "model": {"name": "rnn_classifier", "cell": "lstm", "hidden": 32, "embed_dim": 32, "bidirectional": True,
                  "pool": "max"},
        "task": {"name": "sequence_classify"}, "optimizer": {"name": "adamw", "lr": 3e-3},
        "trainer": {"max_epochs": 2, "progress": "off", "seed": 0, "device": "cpu"}})


@pytest.fixture
def lm_run(mirror, tmp_path_factory):
    """A 2-layer character GPT on tiny Shakespeare, one epoch of 600 windows of 32 characters."""
    return _once("lm", tmp_path_factory, {
        "name": "explain-lm",
        "data": {"name": "shakespeare", "block_size": 32, "stride": 32, "batch_size": 32, "limit": 600},
        "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "dim": 32, "context_size": 32},
        "task": {"name": "language_model"}, "optimizer": {"name": "adamw", "lr": 3e-3},
        "trainer": {"max_epochs": 1, "progress": "off", "seed": 0, "device": "cpu"}})


@pytest.fixture
def mnist_run(mirror, tmp_path_factory):
    """A small CNN on 2,000 MNIST digits, one epoch (~0.7 test accuracy)."""
    return _once("mnist", tmp_path_factory, {
        "name": "explain-mnist", "data": {"name": "mnist", "batch_size": 64, "limit": 2000},
        "model": {"name": "cnn", "channels": [8, 16], "fc_hidden": 32}, "task": {"name": "classify"},
        "trainer": {"max_epochs": 1, "progress": "off", "seed": 0, "device": "cpu"}})
