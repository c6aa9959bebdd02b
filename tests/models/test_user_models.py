"""Your own networks from the command line: `[model] name = "nets.py:MyNet"` (a file) or
"pkg.nets:MyNet" (a module). Options reach the constructor, data facts only the parameters it
declares; train, evaluate, predict, --resume and torchrun import the class again from any working
folder; a file that fails to import exits 2 naming the file and the line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import tomli_w
import torch
from test_cli import assert_bad_input, cli, digit_pngs, strata
from train.test_distributed import check_two_processes_match_one
from train.test_resume import check_sigkill_then_resume_is_bit_identical

from strata.build import build_config, load_config
from strata.errors import ConfigError
from strata.models import build_model
from strata.models.user import class_spec, load_class

NETS = """\
import torch
from torch import nn


class MyNet(nn.Module):
    \"\"\"An MLP whose input size and class count come from the data.\"\"\"

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))  # (B, num_classes)


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 8, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, width, 4, 4)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten())  # (B, 32 width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width * 16, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class Recorder(nn.Module):
    \"\"\"Keeps what its constructor received.\"\"\"

    def __init__(self, num_classes, hidden=16, **kwargs):
        super().__init__()
        self.got = {"num_classes": num_classes, "hidden": hidden, **kwargs}
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.head(x)


class NeedsDepth(nn.Module):
    def __init__(self, num_classes: int, depth: int):
        super().__init__()
        self.head = nn.Linear(64, num_classes)


class Picky(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 16):
        super().__init__()
        if hidden % 8:
            raise ValueError(f"hidden must be a multiple of 8, got {hidden}")
        self.head = nn.Linear(64, num_classes)


def helper():
    return 1


class NotAModule:
    pass
"""

DIGITS_INFO = {"kind": "image", "in_shape": [1, 8, 8], "in_channels": 1, "image_size": 8, "in_features": 64,
               "num_classes": 10, "class_names": list("0123456789"), "background": "dark", "normalize": None}


def run_config(spec="nets.py:MyNet", epochs=3, data=(), trainer=(), **options) -> dict:
    """A short classify run on scikit-learn's digits, in the TOML layout."""
    return {"name": "user-net", "data": {"name": "digits", "batch_size": 64, **dict(data)},
            "model": {"name": spec, **options}, "task": {"name": "classify"},
            "optimizer": {"name": "adamw", "lr": 0.003},
            "trainer": {"max_epochs": epochs, "seed": 0, "progress": "off", **dict(trainer)}}


def project(tmp_path: Path, spec="nets.py:MyNet", config: dict | None = None, **options) -> Path:
    """A user's folder: nets.py beside the run config, which names the file relative to itself."""
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    (folder / "nets.py").write_text(NETS)
    cfg = folder / "train.toml"
    cfg.write_text(tomli_w.dumps(config or run_config(spec, **(options or {"hidden": 48}))))
    return cfg


def elsewhere(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


# --- the command line ----------------------------------------------------------------------------------


def test_train_evaluate_predict_and_resume_each_from_another_folder(tmp_path):
    cfg = project(tmp_path)
    run = tmp_path / "run"
    r = strata("train", cfg, "--run-dir", run, "--json", cwd=elsewhere(tmp_path, "a"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test/acc"] > 0.85  # chance is 0.10
    # the run folder names the file absolutely: it imports from any working folder
    assert load_config(run / "config.toml").model.name == f"{(cfg.parent / 'nets.py').resolve()}:MyNet"

    r = strata("evaluate", run, "--json", cwd=elsewhere(tmp_path, "b"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test/acc"] > 0.85

    paths, labels = digit_pngs(elsewhere(tmp_path, "pngs"), 20)
    r = strata("predict", run, *paths, "--json", cwd=elsewhere(tmp_path, "c"))
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["predictions"]
    assert sum(int(p["label"]) == y for p, y in zip(preds, labels)) >= 14

    # --resume with the original config (its relative file name resolves to the same class) continues
    r = strata("train", cfg, "--run-dir", run, "--resume", "--set", "trainer.max_epochs=4", "--json",
               cwd=elsewhere(tmp_path, "d"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["epochs"] == 4 and summary["test/acc"] > 0.85


def test_a_module_on_pythonpath(tmp_path):
    pkg = tmp_path / "lib" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    cfg = project(tmp_path, config=run_config("pkg.nets:MyNet", epochs=1, hidden=32))
    run = tmp_path / "run"
    r = strata("train", cfg, "--run-dir", run, "--json", cwd=elsewhere(tmp_path, "a"), PYTHONPATH=tmp_path / "lib")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["test/acc"] > 0.5
    assert 'name = "pkg.nets:MyNet"' in (run / "config.toml").read_text()  # a module name is kept as given
    r = strata("evaluate", run, "--json", cwd=elsewhere(tmp_path, "b"), PYTHONPATH=tmp_path / "lib")
    assert r.returncode == 0, r.stderr

    code, _, err = cli("train", project(tmp_path, spec="nopkg.nets:MyNet"), "--run-dir", tmp_path / "r2")
    assert_bad_input(code, err, "no module named 'nopkg.nets'", "PYTHONPATH", max_lines=1)


# --- options and data facts -----------------------------------------------------------------------------


def test_data_facts_reach_only_the_parameters_the_constructor_declares(tmp_path):
    cfg = load_config(project(tmp_path, "nets.py:Recorder", hidden=8, extra="kept"))
    model = build_model(cfg.model, **DIGITS_INFO)
    # **kwargs receives the user's keys, never in_channels / in_shape / kind ... of the data
    assert model.got == {"num_classes": 10, "hidden": 8, "extra": "kept"}

    cfg = load_config(project(tmp_path, hidden=8, num_classes=3))
    model = build_model(cfg.model, **DIGITS_INFO)
    assert model.head.out_features == 3  # the user's value wins over the data's
    assert model.body[1].in_features == 64  # in_features from the data


def test_unknown_option_wrong_type_and_missing_parameter(tmp_path):
    code, _, err = cli("train", project(tmp_path, hiden=8), "--run-dir", tmp_path / "r1")
    assert_bad_input(code, err, "[model]: unknown key 'hiden' (did you mean 'hidden'?)", max_lines=1)
    code, _, err = cli("train", project(tmp_path, hidden="wide"), "--run-dir", tmp_path / "r2")
    assert_bad_input(code, err, "[model] hidden: expected an integer, got 'wide'", max_lines=1)
    code, _, err = cli("train", project(tmp_path, config=run_config("nets.py:NeedsDepth")), "--run-dir",
                       tmp_path / "r3")
    assert_bad_input(code, err, "[model] depth: NeedsDepth needs it", "add depth = ... to [model]", max_lines=1)
    cfg = project(tmp_path, "nets.py:Picky", hidden=12)
    code, _, err = cli("train", cfg, "--run-dir", tmp_path / "r4")
    line = NETS.splitlines().index('            raise ValueError(f"hidden must be a multiple of 8, got {hidden}")') + 1
    assert_bad_input(code, err, f"building Picky failed at {cfg.parent.resolve() / 'nets.py'}, line {line}: "
                     "ValueError: hidden must be a multiple of 8, got 12", max_lines=1)


# --- files and classes that do not work -----------------------------------------------------------------


@pytest.mark.parametrize("source, line, fragment", [
    ("import torch\n\nclass MyNet(torch.nn.Module)\n    pass\n", 3, "SyntaxError"),
    ("import torch\n\nSCALE = 1 / 0\n", 3, "ZeroDivisionError: division by zero"),
])
def test_a_file_that_fails_to_import_exits_2_naming_the_file_and_the_line(tmp_path, source, line, fragment):
    cfg = project(tmp_path)
    (cfg.parent / "nets.py").write_text(source)
    r = strata("train", cfg, "--run-dir", tmp_path / "run", cwd=elsewhere(tmp_path, "a"))
    assert_bad_input(r.returncode, r.stderr, f"{(cfg.parent / 'nets.py').resolve()}, line {line}", fragment,
                     "[model] name:", max_lines=1)


def test_a_missing_file_class_or_something_that_is_not_a_module(tmp_path):
    cfg = project(tmp_path, spec="netz.py:MyNet")
    code, _, err = cli("train", cfg, "--run-dir", tmp_path / "r")
    assert_bad_input(code, err, "the file netz.py does not exist", str(cfg.parent / "netz.py"), max_lines=1)
    code, _, err = cli("train", project(tmp_path, spec="nets.py:MyNt"), "--run-dir", tmp_path / "r")
    assert_bad_input(code, err, "has no class 'MyNt' (did you mean 'MyNet'?)", "MyNet, NeedsDepth, Picky, Recorder, SmallCNN",
                     max_lines=1)
    for name in ("helper", "NotAModule"):
        code, _, err = cli("train", project(tmp_path, spec=f"nets.py:{name}"), "--run-dir", tmp_path / "r")
        assert_bad_input(code, err, f"{name} is a", "not a torch.nn.Module subclass", max_lines=1)


# --- the Python interface other parts of strata build on ---------------------------------------------


def test_load_class_imports_a_file_once_and_class_spec_names_it_for_a_new_process(tmp_path):
    cfg = project(tmp_path)
    nets = cfg.parent / "nets.py"
    cls = load_class("nets.py:MyNet", base_dir=cfg.parent)
    assert load_class(f"{nets}:MyNet") is cls  # one execution of the file per process
    assert class_spec(cls) == f"{nets.resolve()}:MyNet"
    twin = pickle.loads(pickle.dumps(cls(64, 10)))  # the synthetic module name pickles
    assert type(twin) is cls

    from strata.models.mlp import MLP

    assert class_spec(MLP) == "strata.models.mlp:MLP"
    assert load_class(class_spec(MLP)) is MLP

    class Local(torch.nn.Module):
        pass

    assert class_spec(Local) is None
    Local.__module__, Local.__qualname__ = "__main__", "Local"
    assert class_spec(Local) is None
    with pytest.raises(ConfigError, match="cannot be imported by a new process"):
        load_class("__main__:Local")


def test_a_dict_config_resolves_the_file_against_the_current_folder(tmp_path, monkeypatch):
    project(tmp_path)
    monkeypatch.chdir(tmp_path / "project")
    raw = {"data": {"name": "digits"}, "model": {"name": "nets.py:MyNet"}, "task": {"name": "classify"}}
    assert build_config(raw).model.name == f"{(tmp_path / 'project' / 'nets.py').resolve()}:MyNet"


# --- exact resume and several processes -----------------------------------------------------------------


def test_a_user_model_killed_mid_epoch_and_resumed_is_bit_identical(tmp_path):
    # batch 32: the helper's 38 steps per epoch
    cfg = project(tmp_path, config=run_config("nets.py:SmallCNN", 6, {"batch_size": 32},
                                              {"checkpoint_every_n_steps": 5, "deterministic": True},
                                              width=8, dropout=0.2))
    check_sigkill_then_resume_is_bit_identical(cfg, tmp_path)


def test_two_processes_with_a_user_model_match_one(tmp_path):
    cfg = project(tmp_path)
    config = run_config(f"{cfg.parent / 'nets.py'}:MyNet", 2, {"batch_size": 999, "limit": 1184}, {"progress": "lines"},
                        hidden=64)
    config.update(name="ddp-test", optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    w1 = check_two_processes_match_one(tomli_w.dumps(config).replace("999", "{batch}"), tmp_path)
    assert not torch.allclose(w1["model.head.weight"], torch.zeros_like(w1["model.head.weight"]))
