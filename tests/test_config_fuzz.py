"""A config fuzzer: seeded mutations of the shipped recipes (a key deleted, a value of the wrong type,
an extreme number, a typo in a key or a name) must each end in a valid config or a ConfigError, and
`strata summary` / `strata train` on them in exit 0 or a one-line message with exit 2: never a
traceback, never exit 0 for a config that validation refused, never NaN in summary.json, never a hang.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import signal
from pathlib import Path

import pytest
import tomli_w

from strata.api import resolve_config
from strata.cli import main
from strata.config import tomllib
from strata.errors import StrataError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.toml"))
MUTATIONS = 300
SUMMARIES = 30  # of the mutations, those run through `strata summary` (loading the data costs ~0.5 s each)
TRAININGS = 8  # two-step `strata train` runs on digits
# Data sets whose loading takes many seconds (tokenising, parsing text or audio): validated, not summarised.
SLOW_DATA = {"eng_fra", "kddcup99", "sst2", "fsdd"}

EXTREMES = [0, -1, 1, 2**63 - 1, -(2**63), 1e308, -1e308, 1e-308, float("inf"), float("-inf"), float("nan"), 0.5]
WRONG_TYPES = ["text", True, [1, "a"], {"x": 1}, [], ""]

DIGITS = {"name": "fuzz", "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.1, "limit": 0},
          "model": {"name": "mlp", "hidden": [16], "dropout": 0.1}, "task": {"name": "classify"},
          "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01, "eps": 1e-8},
          "schedule": {"name": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1},
          "trainer": {"max_epochs": 1, "seed": 0, "progress": "off", "grad_clip": 1.0, "grad_accum": 1}}


def typo(rng: random.Random, word: str) -> str:
    if len(word) < 2:
        return word + "x"
    i = rng.randrange(len(word) - 1)
    return rng.choice([word[:i] + word[i + 1:], word[:i] + word[i + 1] + word[i] + word[i + 2:], word + "s"])


def mutate(rng: random.Random, raw: dict) -> tuple[dict, str]:
    """One mutation of a raw config dict and a description of it."""
    raw = copy.deepcopy(raw)
    sections = [s for s in raw if isinstance(raw[s], dict) and raw[s]]
    sec = rng.choice(sections)
    key = rng.choice(sorted(raw[sec]))
    kind = rng.choice(["delete", "type", "extreme", "extreme", "typo_key", "typo_name"])
    if kind == "delete":
        del raw[sec][key]
    elif kind == "type":
        raw[sec][key] = rng.choice(WRONG_TYPES)
    elif kind == "extreme":
        value = rng.choice(EXTREMES)
        old = raw[sec][key]
        raw[sec][key] = [value] * len(old) if isinstance(old, list) and old and not isinstance(old[0], dict) else value
    elif kind == "typo_key":
        raw[sec][typo(rng, key)] = raw[sec].pop(key)
    else:
        key = "name" if "name" in raw[sec] else key
        raw[sec][key] = typo(rng, str(raw[sec][key]))
    return raw, f"{kind} [{sec}] {key} -> {raw[sec].get(key, '<deleted>')!r}"


def cases(n: int, seed: int = 0) -> list[tuple[str, dict, str]]:
    rng = random.Random(seed)
    raws = {p.name: tomllib.loads(p.read_text()) for p in RECIPES}
    names = sorted(raws)
    out = []
    for _ in range(n):
        name = rng.choice(names)
        raw, what = mutate(rng, raws[name])
        out.append((name, raw, what))
    return out


def validates(raw: dict) -> bool:
    """True for a valid config, False for a ConfigError; anything else fails the test."""
    try:
        resolve_config(copy.deepcopy(raw))
    except StrataError:
        return False
    return True


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    def hung(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: {what}")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run(argv: list[str], what: str, seconds: int = 60) -> tuple[int, str]:
    err = io.StringIO()
    with deadline(seconds, what), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def check_answer(code: int, err: str, valid: bool, what: str) -> None:
    assert "Traceback" not in err and code in (0, 2), f"{what}: exit {code}\n{err}"
    assert valid or code == 2, f"{what}: exit 0 for a config that validation refused\n{err}"
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.startswith("strata ") and ": error: " in ln]
        assert len(lines) == 1, f"{what}: expected one error line\n{err}"


def write(path: Path, raw: dict) -> Path:
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def test_every_mutation_validates_or_is_a_config_error():
    seen = {False: 0, True: 0}
    for name, raw, what in cases(MUTATIONS):
        with deadline(10, f"{name}: {what}"):
            seen[validates(raw)] += 1
    assert seen[False] > MUTATIONS // 4 and seen[True] > MUTATIONS // 10  # the mutations are worth their name


def test_summary_of_mutations_is_a_table_or_one_line(mirror, tmp_path):
    done = 0
    for i, (name, raw, what) in enumerate(cases(MUTATIONS)):
        if str(raw.get("data", {}).get("name")) in SLOW_DATA or done >= SUMMARIES:
            continue
        done += 1
        path = write(tmp_path / f"{i}-{name}", raw)
        code, err = run(["summary", str(path)], f"{name}: {what}")
        check_answer(code, err, validates(raw), f"summary {name}: {what}")
    assert done == SUMMARIES


def test_two_step_trainings_of_mutations_end_cleanly(tmp_path):
    rng = random.Random(1)
    for i in range(TRAININGS):
        raw, what = mutate(rng, DIGITS)
        path = write(tmp_path / f"{i}.toml", raw)
        run_dir = tmp_path / f"run{i}"
        code, err = run(["train", str(path), "--run-dir", str(run_dir), "--set", "trainer.max_steps=2",
                         "--set", "trainer.sanity_val_batches=1"], f"train: {what}", seconds=120)
        check_answer(code, err, validates(raw), f"train: {what}")
        if code == 0:
            json.loads((run_dir / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(
                f"train: {what}: summary.json holds {c}"))
