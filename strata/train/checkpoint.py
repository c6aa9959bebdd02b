"""Checkpoints that survive a crash at any instant.

Layout of one checkpoint folder (`checkpoints/last`, `checkpoints/best`):
    model-<step>.safetensors   the task's weights (model, EMA copies, buffers), with the config in its metadata
    state-<step>.pt            everything else, loadable with torch.load(weights_only=True):
                               optimisers, schedules, scaler, step/epoch/batch position, RNG states
    shards-<step>-<id>/        under [trainer] strategy = "fsdp": the weights and optimiser states as
                               torch.distributed.checkpoint wrote them, one file per process (state-*.pt
                               then holds no optimisers); readable by any number of processes
    manifest.json              names the current pair (and shards) and the previous one

Every file is written to a temp file beside the target, fsynced, then os.replace'd; the manifest is
replaced last, so until it lands the previous pair is still what a reader finds. Files of older
generations, and temp files a killed process left, are removed only after the new manifest is durable.
A pair that fails to load falls back to the previous one with a warning; a manifest that names a file
outside its folder is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from strata.errors import CheckpointError
from strata.files import atomic_write, remove_temp_files


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep one, record the aliases."""
    seen: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name in sorted(state):
        t = state[name].detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.cpu().contiguous()
    return tensors, aliases


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, weights: dict[str, torch.Tensor], state: dict, config: dict, tag: int,
                    shards: str | None = None) -> str:
    """Write one generation; returns the weights' sha256. `shards`: the folder (inside `folder`, already
    written by every process) that holds this generation's sharded weights and optimiser states."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _split_shared(weights)
    sha = weights_sha256(weights)
    meta = {"strata_config": json.dumps(config), "strata_aliases": json.dumps(aliases), "weights_sha256": sha}
    model_name, state_name = f"model-{tag:09d}.safetensors", f"state-{tag:09d}.pt"
    atomic_write(folder / model_name, st_save(tensors, metadata=meta))
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(folder / state_name, buf.getvalue())

    manifest_path = folder / "manifest.json"
    try:
        old = read_manifest(folder) if manifest_path.exists() else {}
    except CheckpointError:  # unreadable: the new generation has no previous
        old = {}
    previous = old.get("current")
    if previous and previous["model"] == model_name:  # same tag written again: keep the older previous
        previous = old.get("previous")
    current = {"model": model_name, "state": state_name, "weights_sha256": sha}
    if shards:
        current["shards"] = shards
    atomic_write(manifest_path, json.dumps({"current": current, "previous": previous}, indent=1))

    keep = {manifest_path.name, *_files(current)} | (set(_files(previous)) if previous else set())
    for f in folder.iterdir():
        if f.name not in keep and not f.name.startswith("."):
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    remove_temp_files(folder)  # left by a process killed mid-write
    return sha


def _files(entry: dict) -> list[str]:
    """The names one manifest entry holds: weights, state and, under fsdp, the shards folder."""
    return [entry[k] for k in ("model", "state", "shards") if entry.get(k)]


def read_manifest(folder: str | Path) -> dict:
    """manifest.json, checked: {"current": entry, "previous": entry or null}, each entry naming a
    weights file and a state file inside `folder` (a name that leads elsewhere is refused)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); delete the folder and train again") from None
    problem = _manifest_problem(manifest, folder)
    if problem:
        raise CheckpointError(f"{path}: {problem}; it is written by strata and was changed since: restore the run "
                              "folder or train again")
    return manifest


def _manifest_problem(manifest, folder: Path) -> str | None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("current"), dict):
        return (f"expected an object with a \"current\" checkpoint entry, got {json.dumps(manifest)[:60]}")
    inside = folder.resolve()
    for which in ("current", "previous"):
        entry = manifest.get(which)
        if entry is None and which == "previous":
            continue
        if not isinstance(entry, dict):
            return f"\"{which}\" is {json.dumps(entry)[:60]}, not an object naming its files"
        for key in ("model", "state", "shards"):
            name = entry.get(key)
            if key == "shards" and name is None:
                continue
            if not isinstance(name, str) or not name:
                return f"\"{which}\" has no \"{key}\" file name"
            if Path(name).name != name or name in (".", "..") or (folder / name).resolve().parent != inside:
                return f"\"{which}\" {key} {name!r} is not a file inside {folder}"
    return None


def _load_pair(folder: Path, entry: dict) -> tuple[dict, dict, dict]:
    raw = (folder / entry["model"]).read_bytes()
    tensors = st_load(raw)
    from safetensors import safe_open  # metadata lives in the header

    with safe_open(folder / entry["model"], framework="pt") as f:
        meta = f.metadata() or {}
    for alias, target in json.loads(meta.get("strata_aliases", "{}")).items():
        tensors[alias] = tensors[target]
    state = torch.load(folder / entry["state"], map_location="cpu", weights_only=True)
    if entry.get("shards"):  # read by the trainer's strategy on --resume
        state["shards"] = str(folder / entry["shards"])
    config = json.loads(meta.get("strata_config", "{}"))
    return tensors, state, config


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, state, config) of the newest loadable generation in `folder`."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(f"no checkpoint in {folder} (manifest.json missing); train first, or point at a run "
                              f"folder that has checkpoints/last")
    manifest = read_manifest(folder)
    errors = []
    for which in ("current", "previous"):
        entry = manifest.get(which)
        if not entry:
            continue
        try:
            result = _load_pair(folder, entry)
        except (OSError, SafetensorError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            errors.append(f"{entry['model']}: {e}")
            warnings.warn(f"checkpoint {folder / entry['model']} failed to load ({e}); trying the previous one")
            continue
        return result
    raise CheckpointError(f"no loadable checkpoint in {folder}: " + "; ".join(errors))


def check_compatible(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    """A clear error when a checkpoint belongs to another model."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: checkpoint {tuple(found[k].shape)}, "
                         f"model {tuple(expected[k].shape)})")
        raise CheckpointError(f"{what} is a checkpoint of another model: {', '.join(parts)}; use the run folder "
                              "that was trained with this config")


def surviving_checkpoint(folder: str | Path) -> str:
    """What a reader of `folder` finds after a failed save (the manifest is replaced last): for messages."""
    try:
        name = json.loads((Path(folder) / "manifest.json").read_text())["current"]["model"]
        step = int(name.split("-")[1].split(".")[0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return f"{folder} holds no earlier checkpoint"
    return f"the previous checkpoint in {folder} (step {step}) is intact"
