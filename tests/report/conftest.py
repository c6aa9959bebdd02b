"""Runs for the report tests, trained once per session: a small CNN on scikit-learn's digits through
`strata train` (which writes its report at the end), and, from the data mirror, a char LSTM language
model on tiny Shakespeare and a class-conditional DCGAN on MNIST, each a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest

DIGITS_CNN = {"name": "digits-cnn", "data": {"name": "digits", "batch_size": 64},
              "model": {"name": "cnn", "channels": [8, 16], "fc_hidden": 32}, "task": {"name": "classify"},
              "optimizer": {"name": "adamw", "lr": 0.003}, "trainer": {"max_epochs": 2, "seed": 0, "progress": "off"}}
QUICK = {"max_epochs": 1, "max_steps": 3, "progress": "off", "seed": 0, "sanity_val_batches": 0}
LM = {"name": "tiny-lm", "data": {"name": "shakespeare", "block_size": 32, "stride": 32, "batch_size": 16, "limit": 200},
      "model": {"name": "rnn_lm", "hidden": 32, "layers": 1, "dropout": 0.0}, "task": {"name": "language_model"},
      "optimizer": {"name": "adamw", "lr": 3e-3}, "trainer": QUICK}
GAN = {"name": "tiny-gan", "data": {"name": "mnist", "batch_size": 16, "limit": 64, "val_fraction": 0.01},
       "model": {"name": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8, "conditional": True},
       "task": {"name": "gan"}, "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}, "trainer": QUICK}


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of strata.cli.main, in-process."""
    from strata.cli import main

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def write_config(path: Path, config: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(config))
    return path


@pytest.fixture(scope="session")
def config_file():
    """config_file(path, dict) writes a run config as TOML and returns the path."""
    return write_config


@pytest.fixture
def digits_config() -> dict:
    """The small digits CNN's run config."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in DIGITS_CNN.items()}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """`strata train` of a small CNN on digits (2 epochs): the run folder, with the report it wrote."""
    from strata.cli import main

    folder = tmp_path_factory.mktemp("report")
    config = write_config(folder / "digits-cnn.toml", DIGITS_CNN)
    run_dir = folder / "digits-cnn"
    assert main(["train", str(config), "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def trained_runs() -> dict:
    """Runs trained from the mirror's data, kept for the session (`mirror` itself is per test)."""
    return {}


def _trained(tmp_path_factory, config: dict) -> Path:
    from strata.api import train
    from strata.report.html import write_report

    run_dir = tmp_path_factory.mktemp("report") / config["name"]
    train(config, run_dir=run_dir, device="cpu")
    write_report(run_dir, device="cpu")
    return run_dir


@pytest.fixture
def lm_run(mirror, trained_runs, tmp_path_factory) -> Path:
    if "lm" not in trained_runs:
        trained_runs["lm"] = _trained(tmp_path_factory, LM)
    return trained_runs["lm"]


@pytest.fixture
def gan_run(mirror, trained_runs, tmp_path_factory) -> Path:
    if "gan" not in trained_runs:
        trained_runs["gan"] = _trained(tmp_path_factory, GAN)
    return trained_runs["gan"]
