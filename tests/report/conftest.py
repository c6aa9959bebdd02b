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

SST2 = {"name": "tiny-sst2", "data": {"name": "sst2", "batch_size": 32, "limit": 256},
        "model": {"name": "rnn_classifier", "hidden": 16, "embed_dim": 16}, "task": {"name": "sequence_classify"},
        "trainer": QUICK}
ENG_FRA = {"name": "tiny-eng-fra", "data": {"name": "eng_fra", "max_words": 6, "max_len": 16, "vocab_size": 500,
                                            "shared_vocab": True, "batch_size": 32, "limit": 512},
           "model": {"name": "transformer_seq2seq", "n_layer": 1, "n_head": 2, "dim": 32},
           "task": {"name": "seq2seq", "beam_size": 2}, "trainer": QUICK}
MOVIELENS = {"name": "tiny-mf", "data": {"name": "movielens_100k", "batch_size": 256},
             "model": {"name": "mf", "dim": 8}, "task": {"name": "rating"}, "trainer": QUICK}
AUTOENCODER = {"name": "tiny-ae", "data": {"name": "mnist", "batch_size": 32, "limit": 256},
               "model": {"name": "autoencoder", "kind": "conv", "latent": 8, "channels": [8, 16]},
               "task": {"name": "reconstruct", "loss": "bce", "anomaly_classes": [9]}, "trainer": QUICK}
MIRRORED = {"lm": LM, "gan": GAN, "sst2": SST2, "eng_fra": ENG_FRA, "movielens": MOVIELENS, "autoencoder": AUTOENCODER}


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
def mirrored_run(mirror, trained_runs, tmp_path_factory):
    """mirrored_run(name) -> a run of MIRRORED[name] trained a few steps, with its report."""

    def get(name: str) -> Path:
        if name not in trained_runs:
            trained_runs[name] = _trained(tmp_path_factory, MIRRORED[name])
        return trained_runs[name]

    return get


@pytest.fixture
def lm_run(mirrored_run) -> Path:
    return mirrored_run("lm")


@pytest.fixture
def gan_run(mirrored_run) -> Path:
    return mirrored_run("gan")


@pytest.fixture
def diabetes_run(trained_runs, tmp_path_factory) -> Path:
    """A regression MLP on scikit-learn's diabetes table (a CSV written here), 30 steps."""
    if "diabetes" not in trained_runs:
        from sklearn.datasets import load_diabetes

        d = load_diabetes(scaled=False)
        csv = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
        rows = [",".join(d.feature_names + ["progression"])]
        csv.write_text("\n".join(rows + [",".join(f"{v:.6g}" for v in (*x, y)) for x, y in zip(d.data, d.target)]))
        trained_runs["diabetes"] = _trained(tmp_path_factory, {
            "name": "diabetes", "data": {"name": "csv", "path": str(csv), "target": "progression", "batch_size": 32},
            "model": {"name": "mlp", "hidden": [32]}, "task": {"name": "regress"},
            "trainer": {**QUICK, "max_steps": 30, "max_epochs": 5}})
    return trained_runs["diabetes"]
