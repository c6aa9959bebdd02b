"""A served run: the trained run loaded once, what it takes and can do (GET /info), and its work,
done in one worker thread of its own through the same calls as `strata predict / explain / generate`."""

from __future__ import annotations

import base64
import difflib
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from strata.errors import StrataError
from strata.serve import inputs as I
from strata.serve.batching import Batcher
from strata.tasks.base import Task

# Bounds of one request's generation, whatever the run's defaults say (a 400 names them).
MAX_NEW_TOKENS = 2000
MAX_STEPS = 1000
# Input kind by data set, where the set's `info["kind"]` does not say it (or says something else).
KIND_BY_DATASET = {"fsdd": "audio", "sst2": "text", "eng_fra": "text", "shakespeare": "none", "ett": "timeseries",
                   "csv": "table", "kddcup99": "table", "numpy": "array", "python": "array"}


def _overrides(task: Task, method: str) -> bool:
    return getattr(type(task), method) is not getattr(Task, method)


def input_kind(dataset: str, info: dict, task: Task) -> str:
    if not _overrides(task, "predict_step") and not _overrides(task, "recommend"):
        return "none"
    kind = KIND_BY_DATASET.get(dataset) or info.get("kind") or "array"
    return kind if kind in I.INPUT_KINDS else "array"


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


@dataclass
class ServedRun:
    name: str
    run: Any  # strata.fitting.Run
    spec: Any  # the run's DatasetSpec
    device: torch.device
    input: str = "none"
    actions: list[str] = field(default_factory=list)
    executor: ThreadPoolExecutor | None = None
    batcher: Batcher | None = None

    @classmethod
    def load(cls, name: str, run_dir: Path, device: torch.device) -> "ServedRun":
        from strata.api import load_run
        from strata.data import DATASETS

        run = load_run(run_dir, device=device)
        run.task.eval()
        served = cls(name, run, DATASETS.get(run.cfg.data.name), device)
        task = run.task
        served.input = input_kind(run.cfg.data.name, run.info, task)
        can = {"predict": served.input not in ("none", "ratings") and _overrides(task, "predict_step"),
               "explain": served.input in ("image", "table", "timeseries", "audio", "array", "text")
               and _overrides(task, "explain_scores"),
               "generate": _overrides(task, "generate"),
               "stream": run.cfg.task.name == "language_model",
               "recommend": _overrides(task, "recommend")}
        served.actions = [a for a, ok in can.items() if ok]
        served.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"strata-serve-{name}")
        return served

    # --- GET /info ----------------------------------------------------------------------------
    def describe(self) -> dict:
        info, task = self.run.info, self.run.task
        shape = info.get("in_shape")
        image = None
        if self.input == "image" and shape and len(shape) == 3:
            image = {"channels": shape[0], "height": shape[1], "width": shape[2]}
        class_names = info.get("class_names") or getattr(task, "class_names", None)
        return {"name": self.name, "task": self.run.cfg.task.name, "input": self.input, "actions": self.actions,
                "class_names": list(class_names) if class_names and "predict" in self.actions else None,
                "input_shape": list(shape) if shape else None, "image": image, "columns": self.columns,
                "generate": self.generate_info(), "served": self.served()}

    def served(self) -> dict:
        """Predict requests answered so far, and the forward passes and inputs they took (their ratio is
        the mean batch size)."""
        b = self.batcher
        return {"requests": b.requests, "batches": b.batches, "items": b.items} if b else {}

    @functools.cached_property
    def columns(self) -> list[dict] | None:
        """A table run's columns: name, "number" or "category", and a category's values."""
        if self.input != "table":
            return None
        info = self.run.info
        if "kddcup99" in info:
            from strata.data.kddcup import COLUMNS, SYMBOLIC

            cats = info["kddcup99"].get("categories", {})
            return [{"name": c, "type": "category" if i in SYMBOLIC else "number",
                     "choices": list(cats.get(c, cats.get(i, []))) if i in SYMBOLIC else None}
                    for i, c in enumerate(COLUMNS)]
        return ([{"name": c["name"], "type": "number", "choices": None} for c in info.get("numeric", [])]
                + [{"name": c["name"], "type": "category", "choices": list(c.get("values", []))}
                   for c in info.get("categorical", [])])

    def generate_info(self) -> dict | None:
        if "generate" not in self.actions:
            return None
        task = self.run.task
        if self.run.cfg.task.name in ("language_model", "seq2seq"):
            opts = task.cfg
            defaults = {k: getattr(opts, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p")
                        if hasattr(opts, k)}
            if "max_new_tokens" in defaults:
                defaults["max_new_tokens"] = min(defaults["max_new_tokens"], MAX_NEW_TOKENS)
            return {"kind": "text", "conditional": False, "class_names": [], "defaults": defaults}
        conditional = bool(getattr(task, "conditional", False))
        defaults: dict[str, Any] = {"n": 16, "seed": 0}
        for key, name in (("steps", "sample_steps"), ("guidance", "guidance")):
            if hasattr(task.cfg, name) and (key != "guidance" or conditional):
                defaults[key] = getattr(task.cfg, name)
        return {"kind": "image", "conditional": conditional, "defaults": defaults,
                "class_names": list(getattr(task, "class_names", []) or []) if conditional else []}

    # --- request -> the inputs encode_inputs reads ---------------------------------------------
    def prepare(self, items: list, files: I.RequestFiles) -> list[str]:
        """The request's items as `encode_inputs` takes them: the request's files, or sentences."""
        out = []
        for i, item in enumerate(items):
            where = f"inputs[{i}]"
            if self.input == "image":
                out.append(I.image_file(item, where, files, i))
            elif self.input == "audio":
                out.append(I.wav_file(item, where, files, i))
            elif self.input == "text":
                out.append(I.text_item(item, where))
            elif self.input == "timeseries":
                out.append(I.timeseries_file(item, where, files, i))
            elif self.input == "array":
                out.append(I.array_file(item, where, files, i, self.run.info.get("in_shape")))
            elif self.input == "table":
                row = I.table_row(item, where, self.columns or [])
                if "kddcup99" in self.run.info:  # an inline row, in the file's column order
                    missing = [c["name"] for c in self.columns if c["name"] not in row]
                    if missing:
                        raise I.BadInput(f"{where}: missing column(s) {', '.join(missing[:5])}; a KDD Cup 99 row "
                                         "needs all 41", where)
                    out.append(",".join(row[c["name"]] for c in self.columns))
                else:
                    out.append(I.table_file(row, files, i, self.run.info.get("delimiter", ",")))
            else:
                raise I.BadInput(f"run '{self.name}' takes no inputs to predict from; it can: "
                                 f"{', '.join(self.actions)}", "inputs")
        return out

    # --- work, in the worker thread --------------------------------------------------------------
    def predict(self, inputs: list[str]) -> list[dict]:
        """One forward pass over inputs; the same path as `strata predict RUN_DIR INPUT...`."""
        from strata.train.loader import to_device

        batch = to_device(self.spec.encode_inputs(list(inputs), self.run.info, self.run.run_dir), self.device)
        with torch.no_grad():
            return self.run.task.predict_step(batch)

    def explain(self, inputs: list[str], target, method: str | None, steps: int | None) -> dict:
        from strata.evaluate import explain_run

        with tempfile.TemporaryDirectory(prefix="strata-serve-") as tmp:
            out = Path(tmp) / "heatmap.png"
            results = explain_run(self.run.run_dir, inputs, method=method or "integrated_gradients", target=target,
                                  steps=steps or 32, out=out, device=str(self.device))
            answer: dict[str, Any] = {"explanations": [{k: v for k, v in r.items() if k != "out"} for r in results]}
            if out.is_file():
                answer["heatmap"] = data_url(out)
        return answer

    def generate(self, request: dict, on_text=None) -> dict:
        task = self.run.task
        if self.generate_info()["kind"] == "text":
            with torch.no_grad():
                if on_text is not None:
                    return task.generate(request, self.run.run_dir, on_text=on_text)
                return task.generate(request, self.run.run_dir)
        with tempfile.TemporaryDirectory(prefix="strata-serve-") as tmp:
            req = {**request, "out": Path(tmp) / "grid.png", "out_dir": Path(tmp) / "samples"}
            with torch.no_grad():
                result = task.generate(req, self.run.run_dir)
            images = [data_url(p) for p in sorted((Path(tmp) / "samples").glob("*.png"))]
            answer = {k: v for k, v in result.items() if k not in ("out", "out_dir")}
            return {**answer, "images": images, "grid": data_url(Path(result["out"]))}

    def recommend(self, request: dict) -> dict:
        return self.run.task.recommend(request, self.run.run_dir)


def run_names(run_dirs: list[Path]) -> list[str]:
    """Each folder's name, deduplicated with -2, -3, ..."""
    names: list[str] = []
    for d in run_dirs:
        base = Path(d).resolve().name or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def unknown_run(name: str, known: list[str]) -> StrataError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return StrataError(f"no run named '{name}'{hint} (served: {', '.join(known)})")
