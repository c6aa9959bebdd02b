"""Input that used to end in a traceback, a hang or a silent NaN now ends in one line naming the
problem and the fix, exit 2; a bug in strata keeps its traceback and asks for a report (exit 1).
One regression test per case of the issue; the disk-full case runs on a real, small tmpfs where the
machine lets us mount one."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

import strata.cli
from strata.errors import DataError
from test_cli import REPO, TINY_CNN, TINY_MLP, assert_bad_input, cli, env, write


@pytest.fixture
def mlp(tmp_path) -> Path:
    return write(tmp_path / "tiny.toml", TINY_MLP)


# --- configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, fragment", [
    ("optimizer.lr=inf", "[optimizer] lr: expected a finite number, got inf"),
    ("optimizer.weight_decay=inf", "[optimizer] weight_decay: expected a finite number, got inf"),
    ("optimizer.lr=nan", "[optimizer] lr: expected a finite number, got nan"),
    ("optimizer.lr=1e308", "[optimizer] lr: must be <= 1000"),
    ("optimizer.weight_decay=1e308", "[optimizer] weight_decay: must be >= 0 and <= 1000"),
    ("optimizer.eps=-1", "[optimizer] eps: must be in (0, 1]"),
    ("optimizer.alpha=-1", "[optimizer] alpha: must be in [0, 1]"),
    ("trainer.seed=9223372036854775807", "[trainer] seed: must be in [0, 2**32), got 9223372036854775807"),
    ("data.split_seed=-1", "[data] split_seed: must be in [0, 2**32)"),
    ("trainer.nonfinite='ignore'", "[trainer] nonfinite: must be one of 'stop', 'skip'"),
])
def test_extreme_numbers_are_refused_at_load(mlp, tmp_path, setting, fragment):
    for command in ("train", "summary"):
        extra = ("--run-dir", tmp_path / "run") if command == "train" else ()
        code, _, err = cli(command, mlp, "--set", setting, *extra)
        assert_bad_input(code, err, fragment, max_lines=1)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_5000_deep_array_in_set_or_in_the_file_is_one_line(mlp, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    code, _, err = cli("summary", mlp, "--set", f"model.hidden={deep}")
    assert_bad_input(code, err, "nested too deeply", max_lines=1)
    code, _, err = cli("summary", write(tmp_path / "deep.toml", TINY_MLP + f"\n[schedule]\nx = {deep}\n"))
    assert_bad_input(code, err, "deep.toml", max_lines=1)


def test_val_fraction_that_leaves_no_training_example_names_val_fraction(mlp, tmp_path):
    for command, extra in (("summary", ()), ("train", ("--run-dir", tmp_path / "run"))):
        code, _, err = cli(command, mlp, "--set", "data.val_fraction=0.9999999", *extra)
        assert_bad_input(code, err, "[data] val_fraction: 0.9999999 leaves 0 training example", max_lines=1)
        assert "batch_size" not in err


def test_summary_of_a_task_the_model_and_data_do_not_fit(mlp):
    code, _, err = cli("summary", mlp, "--set", "task.name='language_model'")
    assert_bad_input(code, err, "does not fit the data of 'digits' with task 'language_model'", "'tokens'",
                     max_lines=1)


@pytest.mark.parametrize("width", ["1000000000", "9223372036854775807"])
def test_a_layer_too_wide_to_allocate_names_its_parameters_and_memory(mlp, tmp_path, width):
    for command, extra in (("summary", ()), ("train", ("--run-dir", tmp_path / "run"))):
        code, _, err = cli(command, mlp, "--set", f"model.hidden=[{width}]", *extra)
        if width.startswith("1"):
            assert_bad_input(code, err, "75,000,000,010 parameters would need", " GB ", "lower the layer widths",
                             max_lines=1)
        else:
            assert_bad_input(code, err, "[model]: its layer sizes overflow", max_lines=1)


# --- data ---------------------------------------------------------------------------------------------


def test_a_csv_with_an_inf_cell_is_refused_naming_column_and_row(tmp_path):
    write(tmp_path / "t.csv", "a,b,y\n1,2,0\n3,inf,1\nnan,4,0\n5,6,1\n7,8,0\n6,5,1\n")
    cfg = write(tmp_path / "t.toml", f'name = "t"\n[data]\nname = "csv"\npath = "{tmp_path / "t.csv"}"\ntarget = "y"\n'
                                     '[model]\nname = "mlp"\n[task]\nname = "classify"\n')
    code, _, err = cli("train", cfg, "--run-dir", tmp_path / "run")
    assert_bad_input(code, err, "column 'b' row 2 is 'inf', not a finite number", max_lines=1)


def test_an_npz_with_nan_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    x[7, 1] = np.nan
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(40) % 2)
    cfg = write(tmp_path / "a.toml", f'name = "a"\n[data]\nname = "numpy"\npath = "{tmp_path / "a.npz"}"\n'
                                     '[model]\nname = "mlp"\n[task]\nname = "classify"\n')
    code, _, err = cli("train", cfg, "--run-dir", tmp_path / "run")
    assert_bad_input(code, err, "x holds 1 NaN or inf values (the first at index [7, 1])", max_lines=1)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no pixel data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_an_image_claiming_14000_by_14000_pixels_is_refused(tmp_path):
    from strata.data.images import load_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(14000, 14000))
    with pytest.raises(DataError, match="too large to open safely"):
        load_image(bomb, 1, 8)


# --- commands on a trained run ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("errors")
    code, _, err = cli("train", write(work / "cnn.toml", TINY_CNN), "--set", "trainer.max_epochs=1",
                       "--run-dir", work / "cnn", "--json")
    assert code == 0, err
    return work / "cnn"


def test_predict_and_explain_on_an_image_bomb_and_explain_out_a_folder(cnn_run, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(14000, 14000))
    code, _, err = cli("predict", cnn_run, bomb)
    assert_bad_input(code, err, "bomb.png claims to be an image too large", max_lines=1)
    from PIL import Image

    digit = tmp_path / "digit.png"
    Image.new("L", (8, 8), 0).save(digit)
    folder = tmp_path / "out"
    folder.mkdir()
    code, _, err = cli("explain", cnn_run, digit, "--out", folder)
    assert_bad_input(code, err, f"--out {folder} is a folder", "give a file name", max_lines=1)


def test_generate_bounds_max_new_tokens_and_says_so():
    from strata.tasks.language_model import MAX_NEW_TOKENS, LanguageModelConfig, check_request

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = check_request({"max_new_tokens": 1_000_000_000}, LanguageModelConfig())
    assert r["max_new_tokens"] == MAX_NEW_TOKENS
    assert "--max-new-tokens 1,000,000,000 is more than one call generates" in str(caught[0].message)


# --- the one place: StrataError -> one line, exit 2; a bug -> traceback and a request, exit 1 --------------


def test_an_unexpected_exception_keeps_its_traceback_and_asks_for_a_report(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(strata.cli.COMMANDS, "recipes", broken)
    code, _, err = cli("recipes")
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err and "a bug in strata" in err and "report" in err
    with pytest.raises(ZeroDivisionError):
        cli("--debug", "recipes")


def test_a_full_disk_anywhere_is_one_line_exit_2(monkeypatch):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")

    monkeypatch.setitem(strata.cli.COMMANDS, "recipes", full)
    code, _, err = cli("recipes")
    assert_bad_input(code, err, "cannot write /runs/x/metrics.jsonl: no space left on the device", max_lines=1)


def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130(tmp_path, monkeypatch, mlp):
    import builtins

    real = builtins.__import__

    def interrupted(name, *a, **k):
        if name.startswith("strata.api") or name == "torch":
            raise KeyboardInterrupt
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    code, _, err = cli("train", mlp, "--run-dir", tmp_path / "run")
    monkeypatch.setattr(builtins, "__import__", real)
    assert code == 130 and err.strip() == "strata train: interrupted"
    # before main runs: while `strata` itself imports
    script = ("import builtins, sys\nreal = builtins.__import__\n"
              "def imp(name, *a, **k):\n    if name == 'argparse': raise KeyboardInterrupt\n"
              "    return real(name, *a, **k)\nbuiltins.__import__ = imp\nsys.modules.pop('argparse', None)\n"
              "import strata.cli\n")
    r = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "strata: interrupted", r.stderr


# --- disk full during a checkpoint ----------------------------------------------------------------------

DISK_FULL = """\
import sys
from pathlib import Path
import strata.cli
import strata.train.trainer as trainer_module
from strata.train import Callback
from strata.train.checkpoint import load_checkpoint

class FillTheDisk(Callback):
    # after the first checkpoint: fill what is left of the small file system
    done = False
    def on_checkpoint_saved(self, trainer, which, path):
        if not self.done:
            self.done = True
            try:
                with open(Path(path).parents[2] / "filler", "wb", buffering=0) as f:
                    while True:
                        f.write(b"x" * 4096)
            except OSError:
                pass

builtin = trainer_module.builtin_callbacks
trainer_module.builtin_callbacks = lambda cfg, schedules: builtin(cfg, schedules) + [FillTheDisk()]
code = strata.cli.main(sys.argv[2:])
weights, state, _ = load_checkpoint(Path(sys.argv[1]) / "checkpoints" / "last")
print("last checkpoint step", state["step"], flush=True)
sys.exit(code)
"""


def test_disk_full_during_a_checkpoint_says_so_and_the_previous_checkpoint_survives(tmp_path, mlp):
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount to put the run on a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = write(tmp_path / "fill.py", DISK_FULL)
    run_dir = mnt / "run"
    argv = [sys.executable, str(script), str(run_dir), "train", str(mlp), "--run-dir", str(run_dir),
            "--set", "trainer.checkpoint_every_n_steps=4", "--set", "trainer.max_steps=12",
            "--set", "data.val_fraction=0"]
    shell = f"mount -t tmpfs -o size=2m tmpfs {mnt} && exec " + " ".join(f"'{a}'" for a in argv)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not let a test mount a tmpfs ({probe.stderr.strip()})")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", shell], env=env(), capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert "last checkpoint step 4" in r.stdout, r.stdout + r.stderr
    assert_bad_input(r.returncode, r.stderr, "no space left on the device", "checkpoint not saved",
                     "the previous checkpoint in", "(step 4) is intact", max_lines=2)
