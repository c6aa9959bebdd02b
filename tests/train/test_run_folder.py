"""Nothing lost, nobody let in: strata trains only into a folder that is new, empty or its own, one
process at a time; every file a run folder names stays inside it; and a run killed at any instant
(SIGKILL inside a checkpoint write, SIGTERM during the test pass) loses nothing and resumes to the
same weights, bit for bit.

The killed runs are forked copies of this process that call the CLI's main (the command line without
a second start-up of Python and torch), so several seeded kills fit in a few seconds each."""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import strata
from strata.errors import CheckpointError, Interrupted, StrataError
from strata.run_folder import MARK, RunFolder
from strata.train import checkpoint as C
from test_cli import TINY_MLP, assert_bad_input, cli, env, write
from train.test_resume import CONFIG as RESUME_CONFIG

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks killed runs; locks are POSIX")

TINY = TINY_MLP.replace("max_epochs = 1", 'max_epochs = 2\nprogress = "off"')

# test_resume's run, smaller, with a checkpoint every 2 steps: most fsync / os.replace calls of a run
# are inside checkpoint writes.
CHAOS = (RESUME_CONFIG.replace("channels = [8, 16]", "channels = [4, 8]").replace("fc_hidden = 32", "fc_hidden = 16")
         .replace("max_epochs = 12", "max_epochs = 2").replace("checkpoint_every_n_steps = 5", "checkpoint_every_n_steps = 2"))


# --- helpers ----------------------------------------------------------------------------------------


def forked(argv, log: Path, *, kill_at_call: int = 0, kill_after: float = 0.0, setup=None,
           timeout: float = 180) -> int:
    """`strata ARGV` in a forked copy of this process, stderr to `log`: its exit code, or -9 when it
    was killed. kill_at_call: it SIGKILLs itself at its n-th os.fsync / os.replace (inside an atomic
    write: after the temp file, before or after the rename); kill_after: SIGKILL from here after so
    many seconds. setup: called in the child first."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", buffering=1, closefd=False)
            torch.set_num_threads(1)  # as in every run compared here: the same floating-point reductions
            if kill_at_call:
                calls = iter(range(1, 1 << 30))

                def dying(fn):
                    def call(*a, **k):
                        if next(calls) == kill_at_call:
                            os.kill(os.getpid(), signal.SIGKILL)
                        return fn(*a, **k)
                    return call

                os.fsync, os.replace = dying(os.fsync), dying(os.replace)
            if setup:
                setup()
            from strata.cli import main

            code = main([str(a) for a in argv])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 70)
    deadline, kill_time = time.monotonic() + timeout, time.monotonic() + kill_after if kill_after else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if kill_time is not None and time.monotonic() >= kill_time:
            os.kill(pid, signal.SIGKILL)
            kill_time = None
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"strata {' '.join(map(str, argv))} ran past {timeout} s:\n{log.read_text()}")
        time.sleep(0.005)


def hold(run_dir: Path, resume: bool = False) -> int:
    """A forked process that has claimed `run_dir` (as a training run does) and sleeps: its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            RunFolder(run_dir).claim(resume)
            os.write(w, b"1")
            time.sleep(300)
        except BaseException:
            os.write(w, b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1", "the holder could not claim the folder"
    os.close(r)
    return pid


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def sha(run_dir: Path) -> str:
    return json.loads((run_dir / "summary.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run_folder")


@pytest.fixture(scope="module")
def cfg(work) -> Path:
    return write(work / "tiny.toml", TINY)


@pytest.fixture(scope="module")
def trained(work, cfg) -> Path:
    """A finished run of TINY (2 epochs, best and last checkpoints, a test split)."""
    code, _, err = cli("train", cfg, "--run-dir", work / "trained")
    assert code == 0, err
    return work / "trained"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run to damage."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def arrays(n: int = 64):
    g = np.random.default_rng(0)
    return g.normal(size=(n, 4)).astype(np.float32), g.integers(0, 2, size=n)


# --- ownership: strata writes only into a new, empty or strata folder ---------------------------------


def test_a_folder_that_is_not_a_strata_run_is_refused_and_left_as_it_was(cfg, tmp_path):
    mine = tmp_path / "mine"
    for name, text in {"checkpoints/notes.txt": "mine", "config.toml": "x = 1", "info.json": "{}",
                       "summary.json": "{}"}.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text(text)
    before = snapshot(mine)
    code, _, err = cli("train", cfg, "--run-dir", mine)
    assert_bad_input(code, err, f"{mine} is not a strata run folder and is not empty", MARK,
                     "choose another --run-dir", max_lines=1)
    with pytest.raises(StrataError, match="is not a strata run folder"):
        strata.fit(torch.nn.Linear(4, 2), arrays(), epochs=1, verbose=0, run_dir=mine)
    assert snapshot(mine) == before and not (mine / MARK).exists()
    # a new folder and an empty one are taken, and marked; a new one nothing was written into goes again
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new" / "run", tmp_path / "empty"):
        claimed = RunFolder(folder).claim()
        assert (folder / MARK).is_file()
        claimed.unlock()
    assert not (tmp_path / "new" / "run").exists() and (tmp_path / "empty" / MARK).is_file()


def test_an_empty_run_dir_a_file_and_a_read_only_disk_are_one_line_refusals(cfg, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    code, _, err = cli("train", cfg, "--run-dir", "")
    assert_bad_input(code, err, "--run-dir is empty", max_lines=1)
    assert sorted(os.listdir(here)) == ["notes.txt"]

    code, _, err = cli("train", cfg, "--run-dir", here / "notes.txt")
    assert_bad_input(code, err, f"run folder {here / 'notes.txt'} is a file, not a folder", max_lines=1)

    target, mkdir = here / "runs" / "ro", Path.mkdir

    def read_only(self, *a, **k):
        if self == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = cli("train", cfg, "--run-dir", target)
    assert_bad_input(code, err, f"cannot write into run folder {target}: Read-only file system", max_lines=1)


@pytest.mark.parametrize("name, fragment", [
    ('"../../escaped"', "is not a plain folder name"),
    ("a/b", "is not a plain folder name"),
    ("..", "is not a plain folder name"),
    ("x" * 300, "300 bytes is too long for a folder name"),
    ("bad\udcff", "is not valid UTF-8 text"),  # how Python hands over argv bytes that are not UTF-8
])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused_before_training(cfg, tmp_path, monkeypatch,
                                                                               name, fragment):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = cli("train", cfg, "--set", f"name={name}")
    assert_bad_input(code, err, "name: ", fragment, max_lines=1)
    assert os.listdir(work) == [] and sorted(os.listdir(tmp_path)) == ["work"]


def test_strata_fit_checks_the_name_too(tmp_path):
    with pytest.raises(StrataError, match="not a plain folder name"):
        strata.fit(torch.nn.Linear(4, 2), arrays(), epochs=1, verbose=0, name="../up")


def test_a_run_made_before_the_mark_is_still_evaluated_and_resumed(run, cfg):
    (run / MARK).unlink()
    code, out, err = cli("evaluate", run, "--json")
    assert code == 0, err
    code, _, err = cli("train", cfg, "--run-dir", run, "--resume", "--set", "trainer.max_epochs=3")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3 and (run / MARK).is_file()


# --- one writer at a time -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(run, cfg):
    holder = hold(run, resume=True)
    try:
        for extra in ([], ["--resume"]):  # a new run there, or resuming it while it trains
            code, _, err = cli("train", cfg, "--run-dir", run, *extra)
            assert_bad_input(code, err, f"run folder {run} is in use by another strata process (pid {holder} ",
                             "then add --resume", max_lines=1)
        with pytest.raises(StrataError, match=f"pid {holder} "):
            strata.fit(torch.nn.Linear(4, 2), arrays(), epochs=1, verbose=0, run_dir=run, resume=True)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    # SIGKILL leaves no stale lock: the OS released it
    code, _, err = cli("train", cfg, "--run-dir", run, "--resume", "--set", "trainer.max_epochs=3")
    assert code == 0, err


def test_under_torchrun_every_rank_exits_when_rank_0_finds_the_folder_in_use(run, cfg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    holder = hold(run, resume=True)
    try:
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                              "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "strata", "train", str(cfg),
                              "--run-dir", str(run), "--resume", "--device", "cpu"],
                             env=env(), capture_output=True, text=True, timeout=180)  # a hang: a rank kept waiting
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert out.returncode != 0
    assert out.stderr.count(f"is in use by another strata process (pid {holder} ") == 2, out.stderr  # each rank


# --- every file a run folder names stays inside it ----------------------------------------------------------


def _manifests(run: Path):
    return [run / "checkpoints" / which / "manifest.json" for which in ("best", "last")]


def test_a_manifest_that_names_a_file_outside_the_run_is_refused(run):
    for path in _manifests(run):
        m = json.loads(path.read_text())
        shutil.copy(path.parent / m["current"]["model"], run.parent / "outside.safetensors")  # loadable weights
        m["current"]["model"] = "../../../outside.safetensors"
        path.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="using .*last instead"):
        code, _, err = cli("evaluate", run)
    assert_bad_input(code, err, f"{_manifests(run)[1]}: \"current\" model '../../../outside.safetensors' is not a "
                     f"file inside {run / 'checkpoints' / 'last'}", max_lines=1)
    from strata.metrics.judge import load_judge
    from strata.models.pretrained import encoder_from_run

    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="is not a file inside"):
        strata.load(run)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="is not a file inside"):
        load_judge(run)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="is not a file inside"):
        encoder_from_run(str(run), tuple(RunFolder(run).read_info()["in_shape"]), pretrained=True)


@pytest.mark.parametrize("manifest, fragment", [
    ([1], 'expected an object with a "current" checkpoint entry, got [1]'),
    ({"current": 3}, 'expected an object with a "current" checkpoint entry'),
    ({"current": {"state": "state-000000001.pt"}}, '"current" has no "model" file name'),
    ({"current": {"model": "m", "state": "s"}, "previous": "x"}, '"previous" is "x", not an object'),
    ({"current": {"model": "/etc/passwd", "state": "s"}}, "\"current\" model '/etc/passwd' is not a file inside"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line_naming_the_file(run, manifest, fragment):
    for path in _manifests(run):
        path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning):
        code, _, err = cli("evaluate", run)
    assert_bad_input(code, err, f"{_manifests(run)[1]}: {fragment}", max_lines=1)
    with pytest.raises(CheckpointError, match="manifest.json: "):
        C.load_checkpoint(run / "checkpoints" / "last")


def test_a_truncated_best_checkpoint_falls_back_to_last_with_a_warning(run):
    best = run / "checkpoints" / "best"
    for f in best.glob("model-*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"using {run / 'checkpoints' / 'last'} instead"):
        loaded = strata.load(run)
    assert loaded.checkpoint == str(run / "checkpoints" / "last")
    with pytest.warns(UserWarning, match="instead"):
        code, out, err = cli("evaluate", run, "--json")
    assert code == 0, err
    assert 0 < json.loads(out)["test/acc"] <= 1


# --- what a crash leaves behind ---------------------------------------------------------------------------


def test_temp_files_a_killed_write_left_are_removed_on_the_next_save_and_on_resume(run, cfg, tmp_path):
    folder = tmp_path / "ckpt"
    C.save_checkpoint(folder, {"w": torch.ones(2)}, {"step": 1}, {}, 1)
    (folder / ".model-000000002.safetensors.k2j3x.tmp").write_bytes(b"\0" * 100)
    C.save_checkpoint(folder, {"w": torch.ones(2)}, {"step": 2}, {}, 2)
    assert temp_files(folder) == []

    orphans = [run / "checkpoints" / "last" / ".model-000000038.safetensors.a1b2c3.tmp",
               run / "checkpoints" / "best" / ".state-000000038.pt.d4e5f6.tmp", run / ".config.toml.g7h8.tmp"]
    for f in orphans:
        f.write_bytes(b"\0" * (4 << 20))
    assert len(temp_files(run)) == 3
    code, _, err = cli("train", cfg, "--run-dir", run, "--resume", "--set", "trainer.max_epochs=3")
    assert code == 0, err
    assert temp_files(run) == []


def test_the_resume_command_after_an_interrupt_is_quoted_for_the_shell(tmp_path, monkeypatch, cfg):
    run_dir = tmp_path / "my runs" / "it's here"

    def interrupted(*a, **k):
        raise Interrupted(signal.SIGINT, run_dir, run_dir / "checkpoints" / "last")

    monkeypatch.setattr("strata.api.train", interrupted)
    code, _, err = cli("train", cfg, "--run-dir", run_dir)
    assert code == 130
    command = err.strip().splitlines()[-1]
    assert shlex.split(command) == ["strata", "train", str(run_dir / "config.toml"), "--run-dir", str(run_dir),
                                    "--resume"]


def _sigterm_in_the_test_pass():
    from strata.train.trainer import Trainer

    evaluate_split = Trainer.evaluate_split

    def and_sigterm(self, split, max_batches=0):
        if split == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate_split(self, split, max_batches)

    Trainer.evaluate_split = and_sigterm


def test_sigterm_during_the_final_test_pass_exits_143_and_resume_finishes(cfg, tmp_path):
    run, log = tmp_path / "run", tmp_path / "log"
    code = forked(["train", cfg, "--run-dir", run], log, setup=_sigterm_in_the_test_pass)
    err = log.read_text()
    assert code == 143, err
    assert "interrupted by SIGTERM" in err and "Resume with:" in err and "Traceback" not in err
    assert not (run / "summary.json").exists()
    assert RunFolder(run).read_metrics()[-1]["event"] == "interrupted"
    C.load_checkpoint(run / "checkpoints" / "last")  # intact
    assert forked(["train", cfg, "--run-dir", run, "--resume"], log) == 0, log.read_text()
    assert RunFolder(run).read_summary()["epochs"] == 2


# --- chaos: SIGKILL at seeded random instants, resumed, the same weights ------------------------------------


@pytest.fixture(scope="module")
def chaos_reference(work) -> tuple[Path, str]:
    cfg = write(work / "chaos.toml", CHAOS)
    log = work / "reference.log"
    assert forked(["train", cfg, "--run-dir", work / "reference"], log) == 0, log.read_text()
    return cfg, sha(work / "reference")


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_random_instants_then_resume_is_bit_identical(chaos_reference, tmp_path, seed):
    """Three kills a run: at a random fsync / os.replace of the process (a checkpoint's model, state or
    manifest half written, or written and not yet renamed), at a random time, and again at a random
    write; then resume until the run finishes. The weights match the uninterrupted run."""
    cfg, reference = chaos_reference
    rng = random.Random(seed)
    run, log = tmp_path / "run", tmp_path / "log"
    kills = [{"kill_at_call": rng.randint(1, 300)}, {"kill_after": rng.uniform(0.5, 4.0)},
             {"kill_at_call": rng.randint(1, 150)}]
    outcomes = []
    for kill in kills + [{}] * 2:
        resume = ["--resume"] if RunFolder(run).has_checkpoint("last") else []
        code = forked(["train", cfg, "--run-dir", run, *resume], log, **kill)
        outcomes.append(code)
        assert code in (0, -signal.SIGKILL), log.read_text()
        if code == 0:
            break
    assert outcomes[-1] == 0 and -signal.SIGKILL in outcomes, outcomes
    assert sha(run) == reference, outcomes
    assert temp_files(run) == []
