"""Checkpoints survive a crash at any instant: atomic writes leave no temp files and never half a file,
a corrupt newest generation falls back to the previous one with a warning, the non-weight state loads
with torch.load(weights_only=True), and tied (shared) tensors round-trip."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import strata.files
from strata.errors import CheckpointError, StorageError
from strata.train import checkpoint as C


def weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(seed, dtype=torch.long)}


def state(step: int) -> dict:
    return {"step": step, "epoch": 0, "optimizers": {"main": {"state": {0: {"exp_avg": torch.ones(3) * step}},
                                                              "param_groups": [{"lr": 0.1, "params": [0]}]}}}


def save(folder, step: int):
    return C.save_checkpoint(folder, weights(step), state(step), {"name": "t", "step": step}, step)


def files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- atomic writes ----------------------------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    C.atomic_write(target, "one")
    C.atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert files(target.parent) == {"summary.json"}


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "config.toml"
    C.atomic_write(target, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(strata.files.os, "fsync", disk_full)
    with pytest.raises(StorageError, match=r"cannot write .*config\.toml: no space left on the device"):
        C.atomic_write(target, "new")
    assert target.read_text() == "old"
    assert files(tmp_path) == {"config.toml"}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    # mkstemp makes 0600 files; a run folder's config, summary and checkpoints should be as readable
    # as its metrics.jsonl (plain open), i.e. follow the umask
    C.atomic_write(tmp_path / "summary.json", "{}")
    save(tmp_path / "last", 1)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.iterdir(), *(tmp_path / "last").iterdir()]
             if p.is_file()}
    assert set(modes.values()) == {plain.stat().st_mode & 0o777}, modes


def test_generations_keep_current_and_previous_only_and_no_temp_files(tmp_path):
    folder = tmp_path / "last"
    for step in (10, 20, 30):
        save(folder, step)
    assert files(folder) == {"manifest.json", "model-000000030.safetensors", "state-000000030.pt",
                             "model-000000020.safetensors", "state-000000020.pt"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["current"]["model"] == "model-000000030.safetensors"
    assert manifest["previous"]["model"] == "model-000000020.safetensors"
    assert manifest["current"]["weights_sha256"] == C.weights_sha256(weights(30))
    w, s, cfg = C.load_checkpoint(folder)
    assert_same(w, weights(30))
    assert s["step"] == 30 and cfg == {"name": "t", "step": 30}


def test_saving_the_same_step_twice_keeps_an_older_previous(tmp_path):
    # `last` is saved at a step and then again at the same step (end of epoch + validation):
    # the fallback must still be a different generation
    folder = tmp_path / "last"
    save(folder, 10)
    save(folder, 20)
    save(folder, 20)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["previous"]["model"] == "model-000000010.safetensors"
    assert (folder / "model-000000010.safetensors").exists()


def test_a_crash_before_the_manifest_lands_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "last"
    save(folder, 10)
    real = C.atomic_write

    def crash_on_manifest(path, data):
        if os.path.basename(path) == "manifest.json":
            raise KeyboardInterrupt  # killed after the new pair was written, before the manifest
        real(path, data)

    monkeypatch.setattr(C, "atomic_write", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        save(folder, 20)
    monkeypatch.setattr(C, "atomic_write", real)
    w, s, _ = C.load_checkpoint(folder)
    assert s["step"] == 10
    assert_same(w, weights(10))
    assert not [n for n in files(folder) if n.endswith(".tmp")]
    save(folder, 30)  # the orphaned pair of step 20 is cleaned up by the next good save
    assert "model-000000020.safetensors" not in files(folder)


# --- falling back -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which, damage", [
    ("model", "truncate"), ("model", "garbage"), ("model", "delete"),
    ("state", "truncate"), ("state", "garbage"),
])
def test_a_corrupt_newest_generation_falls_back_to_the_previous_with_a_warning(tmp_path, which, damage):
    folder = tmp_path / "last"
    save(folder, 10)
    save(folder, 20)
    path = folder / f"{which}-000000020.{'safetensors' if which == 'model' else 'pt'}"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    else:
        path.unlink()
    with pytest.warns(UserWarning, match="(?s)model-000000020.safetensors failed to load.*trying the previous one"):
        w, s, _ = C.load_checkpoint(folder)
    assert s["step"] == 10
    assert_same(w, weights(10))


def test_both_generations_corrupt_is_a_checkpoint_error_naming_the_folder(tmp_path):
    folder = tmp_path / "last"
    save(folder, 10)
    save(folder, 20)
    for p in folder.glob("model-*"):
        p.write_bytes(b"nope")
    with pytest.warns(UserWarning):
        with pytest.raises(CheckpointError, match="no loadable checkpoint in .*last"):
            C.load_checkpoint(folder)


def test_missing_or_corrupt_manifest_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        C.load_checkpoint(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is corrupt"):
        C.load_checkpoint(tmp_path)


# --- what is inside ---------------------------------------------------------------------------------


def test_a_trained_runs_state_loads_with_weights_only_and_names_its_config(tmp_path):
    from strata.api import train

    cfg = {"name": "ckpt", "data": {"name": "digits", "batch_size": 64, "limit": 256},
           "model": {"name": "mlp", "hidden": [16]}, "task": {"name": "classify"},
           "optimizer": {"name": "adamw", "lr": 0.01}, "trainer": {"max_epochs": 1, "seed": 3, "progress": "off"}}
    res = train(cfg, run_dir=tmp_path / "run")
    last = res.run_dir / "checkpoints" / "last"
    manifest = json.loads((last / "manifest.json").read_text())
    st = torch.load(last / manifest["current"]["state"], map_location="cpu", weights_only=True)
    assert st["step"] == res.summary["steps"] and st["epoch"] == 1
    assert {"optimizers", "schedules", "rng", "batch_in_epoch", "callbacks"} <= set(st)
    assert st["callbacks"]["best_checkpoint"]["best"] == res.summary["best_val/loss"]  # callback state travels too
    assert st["optimizers"]["main"]["state"], "the optimiser's moments are saved"
    assert set(st["rng"]) >= {"python", "numpy", "torch"}
    with safe_open(last / manifest["current"]["model"], framework="pt") as f:
        meta = f.metadata()
    saved_cfg = json.loads(meta["strata_config"])
    assert saved_cfg["model"] == {"name": "mlp", "hidden": [16]} and saved_cfg["trainer"]["seed"] == 3
    # the final weights are the last checkpoint's: summary and manifest agree
    assert manifest["current"]["weights_sha256"] == res.summary["weights_sha256"]
    w, _, _ = C.load_checkpoint(last)
    assert C.weights_sha256(w) == res.summary["weights_sha256"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight  # weight tying (Press & Wolf 2017)
        self.norm = nn.LayerNorm(6)


def test_tied_tensors_round_trip(tmp_path):
    torch.manual_seed(0)
    src = Tied()
    sd = src.state_dict()
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    C.save_checkpoint(tmp_path, sd, {"step": 1}, {}, 1)
    with safe_open(tmp_path / "model-000000001.safetensors", framework="pt") as f:
        assert len([k for k in f.keys() if k.endswith(".weight") and k != "norm.weight"]) == 1  # stored once
    w, _, _ = C.load_checkpoint(tmp_path)
    assert set(w) == set(sd)
    assert torch.equal(w["emb.weight"], sd["emb.weight"]) and torch.equal(w["head.weight"], sd["head.weight"])
    dst = Tied()
    dst.load_state_dict(w)  # strict: both names present
    assert dst.head.weight is dst.emb.weight  # still tied after loading
    assert torch.equal(dst.head.weight, src.head.weight)
    assert C.weights_sha256(dst.state_dict()) == C.weights_sha256(sd)


def test_weights_sha256_is_canonical():
    w = weights(1)
    assert C.weights_sha256(dict(reversed(list(w.items())))) == C.weights_sha256(w)  # order-free
    changed = {k: v.clone() for k, v in w.items()}
    changed["a.bias"][0] = torch.nextafter(changed["a.bias"][0], torch.tensor(1e9))  # one ulp
    assert C.weights_sha256(changed) != C.weights_sha256(w)
    as_double = {k: v.double() if v.is_floating_point() else v for k, v in w.items()}
    assert C.weights_sha256(as_double) != C.weights_sha256(w)  # dtype counts


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = C.rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    path = tmp_path / "rng.pt"
    torch.save(saved, path)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    C.set_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_check_compatible_names_what_differs():
    model = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    C.check_compatible(model, {k: v.clone() for k, v in model.items()}, "x")
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. a.bias\).*1 unexpected \(e.g. b.bias\)"):
        C.check_compatible(model, {"a.weight": torch.zeros(4, 3), "b.bias": torch.zeros(4)}, "ckpt")
    with pytest.raises(CheckpointError, match=r"a.weight: checkpoint \(5, 3\), model \(4, 3\)"):
        C.check_compatible(model, {"a.weight": torch.zeros(5, 3), "a.bias": torch.zeros(4)}, "ckpt")


def test_sharded_generations_keep_current_and_previous_shard_folders_and_refuse_one_outside(tmp_path):
    """Under fsdp each generation also names a folder of shards (written by every process first):
    the two newest are kept, older ones and a half-written one no manifest names are removed, the
    loader reports where the current one is, and a shards name leading out of the folder is refused."""
    folder = tmp_path / "last"
    for step in (10, 20, 30):
        (folder / f"shards-{step}").mkdir(parents=True)
        (folder / f"shards-{step}" / "__0_0.distcp").write_bytes(b"x")
        C.save_checkpoint(folder, weights(step), state(step), {"name": "t"}, step, shards=f"shards-{step}")
    (folder / "shards-40").mkdir()  # a process killed while writing generation 40
    save(folder, 40)
    assert {"shards-30"} <= files(folder) and not {"shards-10", "shards-20", "shards-40"} & files(folder)
    (folder / "shards-50").mkdir()
    C.save_checkpoint(folder, weights(50), state(50), {"name": "t"}, 50, shards="shards-50")
    _, s, _ = C.load_checkpoint(folder)
    assert s["shards"] == str(folder / "shards-50") and s["step"] == 50
    assert "shards-30" not in files(folder)  # previous (40) has none

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["current"]["shards"] = "../elsewhere"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="shards '../elsewhere' is not a file inside"):
        C.read_manifest(folder)
