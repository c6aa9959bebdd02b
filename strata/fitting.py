"""`strata.fit` and `strata.load`: train a person's own network on their own data from Python, with
everything the engine gives the shipped recipes (run folder, atomic checkpoints, exact resume,
validation, best checkpoint, early stopping, progress, torchrun, bf16, compile).

    import strata
    run = strata.fit(my_module, (x, y), epochs=10, batch_size=64, lr=1e-3)
    run.history[-1], run.summary["test/acc"]
    run.predict(x_new)                     # what `strata predict RUN_DIR --json` prints
    run = strata.load(run.run_dir)         # the same object, from disk, in a new process

`model` is a torch.nn.Module, a registered model name (or its [model] table as a dict), or a
strata.Task for a custom step. `data` is (x, y) arrays or tensors, a torch Dataset of tuples or
dicts, a DataLoader, a CSV / .npz path, or a registered data set's [data] table as a dict.
"""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import torch
from torch import nn

from strata.errors import ConfigError, DataError, StrataError
from strata.registry import closest

# Metrics where higher is better: the monitor's mode follows its name.
_HIGHER_IS_BETTER = ("acc", "auroc", "r2", "bleu", "f1", "precision", "recall")
_PLAIN = (bool, int, float, str, type(None))


# ---------------------------------------------------------------------------------------------
# The user's module in a run config: its class, and its constructor arguments when they are data


def _plain(v) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, _PLAIN)


def recorded_options(module: nn.Module) -> dict | None:
    """The constructor arguments that rebuild `module`, read back from attributes of the same name
    (`self.hidden = hidden`), or None when they cannot be recovered. Checked by building the class
    again on the meta device (no memory, no time) and comparing every parameter's name and shape."""
    cls = type(module)
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    options = {}
    for name, p in list(params.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(module, name, inspect.Parameter.empty)
        if value is None and isinstance(p.default, bool):
            value = False  # torch's convention: Linear(bias=False) keeps self.bias = None
        if value is None and p.default is None:
            continue  # TOML has no null: the default says it
        if value is not inspect.Parameter.empty and value is not None and _plain(value) \
                and not isinstance(value, nn.Module):
            options[name] = list(value) if isinstance(value, tuple) else value
        elif p.default is inspect.Parameter.empty:
            return None
    return options if same_shapes(cls, options, module) else None


def same_shapes(cls, options: dict, module: nn.Module) -> bool:
    """Whether cls(**options), built on the meta device (no memory, no time), has `module`'s
    parameters and buffers, name by name and shape by shape."""
    try:
        with torch.device("meta"):
            twin = cls(**options)
    except Exception:  # the constructor wants something else: the user passes the instance to load
        return False
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    return shapes(twin) == shapes(module)


def module_section(module: nn.Module) -> dict:
    """The [model] (or [task]) table recording a user's instance: its class spec and constructor
    options, or the INSTANCE_ONLY name when either cannot be recovered."""
    from strata.models.user import INSTANCE_ONLY, class_spec

    cls = type(module)
    if cls is nn.Sequential:  # a stack of layers that can each be recorded: a Stack of their tables
        from strata.nn.stack import Stack

        layers = [module_section(child) for child in module]
        if all(not layer["name"].startswith(INSTANCE_ONLY) for layer in layers) and \
                same_shapes(Stack, {"layers": layers}, module):
            return {"name": class_spec(Stack), "layers": layers}
    spec = class_spec(cls)
    options = recorded_options(module) if spec else None
    if options is None:
        return {"name": INSTANCE_ONLY + (spec or f"__main__:{cls.__qualname__}")}
    return {"name": spec, **options}


def rebuild(section: dict, what: str):
    """A user's class named in a run config, built again with its recorded options."""
    from strata.models.user import load_class

    spec = section["name"]
    qual = spec.rsplit(":", 1)[-1]
    cls = load_class(spec)  # an INSTANCE_ONLY name raises the error that asks for the instance
    options = {k: v for k, v in section.items() if k != "name"}
    try:
        return cls(**options)
    except Exception as e:
        raise StrataError(f"this run's {what} class {spec} no longer builds from the recorded options {options} "
                          f"({type(e).__name__}: {e}); pass the instance: strata.load(run_dir, model={qual}(...))") \
            from None


# ---------------------------------------------------------------------------------------------
# fit


def _model_sections(model) -> tuple[dict, dict, dict]:
    """(model table, task table or {}, modules given as instances)."""
    from strata.tasks.base import Task

    if isinstance(model, Task):
        section = module_section(model)
        return {"name": section["name"]}, section, {"task": model, "model": model}
    if isinstance(model, nn.Module):
        return module_section(model), {}, {"model": model}
    if isinstance(model, str):
        return {"name": model}, {}, {}
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        return dict(model), {}, {}
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise ConfigError(f"model: got the class {model.__name__}, not an instance; pass {model.__name__}(...)")
    raise ConfigError(f"model: expected a torch.nn.Module, a strata.Task, a registered model name or its [model] "
                      f"table as a dict; got {type(model).__name__}")


def _data_section(data, target: str | None) -> dict | None:
    """The [data] table of data on disk or registered, or None for Python objects."""
    from strata.data import DATASETS

    if isinstance(data, dict):
        if not isinstance(data.get("name"), str):
            raise ConfigError("data: a dict names a registered data set with name = ... (and its own keys)")
        return dict(data)
    if isinstance(data, (str, Path)):
        p = Path(data).expanduser()
        if p.suffix.lower() in (".csv", ".tsv"):
            if not target:
                raise ConfigError(f"data: {p} is a table; name the column to predict with target='...'")
            return {"name": "csv", "path": str(p.resolve()), "target": target,
                    **({"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {})}
        if p.suffix.lower() == ".npz":
            return {"name": "numpy", "path": str(p.resolve())}
        if isinstance(data, str) and data in DATASETS:
            return {"name": data}
        raise DataError(f"data: {data!r} is neither a .csv / .npz file nor a registered data set"
                        f"{closest(str(data), DATASETS.names())}; known: {', '.join(DATASETS.names())}")
    return None


def _infer_task(info: dict) -> str:
    if "num_classes" in info:
        return "sequence_classify" if info.get("kind") in ("text", "audio") else "classify"
    if "num_outputs" in info:
        return "regress"
    raise ConfigError("the task cannot be inferred from this data; name it, e.g. task='classify', 'regress', "
                      "'reconstruct' or 'language_model'")


def fit(model, data, *, val=None, test=None, task: str | None = None, epochs: int = 10, batch_size: int | None = None,
        lr: float = 1e-3, optimizer: str | dict = "adamw", weight_decay: float = 0.0, schedule: str | dict = "constant",
        loss: str | None = None, val_split: float = 0.1, standardize: bool = False, target: str | None = None,
        monitor: str | None = None, patience: int = 0, callbacks=(), run_dir=None, resume: bool = False,
        device: str | torch.device | None = None,
        precision: str | None = None, compile: bool = False, seed: int = 0, verbose: int = 1,
        name: str | None = None, overrides=()) -> "Run":
    """Train `model` on `data` and return the Run. See the module docstring for the forms of both.

    val / test: held-out data in the same form (else val_split of data is held out, stratified).
    task: "classify" / "regress" / ... (inferred: integer labels classify, floats regress).
    loss: the task's loss by name where it offers a choice (regress: "mse", "l1", "huber"); a loss of
    your own is a strata.Task (see the README's third program).
    standardize: scale array inputs by the training split's mean and std (saved with the run and applied
    by predict). monitor / patience: the metric for the best checkpoint and early stopping (patience
    validations without improvement; 0 = never stop early). overrides: "section.key=value" strings for
    any other config key (`trainer.grad_clip=1.0`), as `--set` on the command line. verbose: 0 silent,
    1 a live bar on a terminal or notebook, 2 lines.
    After fit, the model holds the weights of its best validation (what the test figures and predict use).
    """
    from strata.build import build_config, data_config
    from strata.config import apply_overrides
    from strata.data import load_data
    from strata.data.memory import python_bundle
    from strata.run_folder import RunFolder
    from strata.train import Trainer

    if isinstance(batch_size, bool) or batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size: must be a whole number >= 1, got {batch_size!r}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"epochs: must be a whole number >= 1, got {epochs!r}")
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose: 0 (silent), 1 (bar) or 2 (lines), got {verbose!r}")
    model_sec, task_sec, modules = _model_sections(model)
    notices: list[str] = []
    data_sec = _data_section(data, target)
    if data_sec is None:
        own_step = "task" in modules and task is None  # the user's Task reads the batches it is given
        bundle, task, loader_bs = python_bundle(data, val=val, test=test, task=task or ("own" if own_step else None),
                                                val_split=val_split, split_seed=seed, standardize=standardize,
                                                notices=notices)
        data_sec = {"name": "python", "val_fraction": val_split if val is None else 0.0,
                    **({"unlabelled": True} if bundle.labelled is not None else {})}
        batch_size = batch_size or loader_bs
    else:
        if val is not None or test is not None:
            raise ConfigError("val= and test= go with data given as arrays or Datasets; a registered or file data "
                              "set has its own splits ([data] val_fraction, test_fraction)")
        if standardize:
            raise ConfigError("standardize=True works on arrays; a registered data set encodes its own inputs")
        data_sec.setdefault("val_fraction", val_split)
        bundle = None
    data_sec.update(batch_size=batch_size or 32, split_seed=data_sec.get("split_seed", seed))
    if bundle is None:
        bundle = load_data(data_config(data_sec))
        if task is None and "task" not in modules:
            task = _infer_task(bundle.info)
    if loss is not None and "task" in modules:
        raise ConfigError("loss: your own Task computes its own loss in training_step; drop loss=")
    if "task" not in modules:  # a built-in task, named or inferred
        if not isinstance(task, str):
            raise ConfigError(f"task: expected a task name such as 'classify' or 'regress', got {task!r}")
        task_sec = {"name": task, **({"loss": loss} if loss is not None else {})}
    monitor = monitor or "val/loss"
    raw = {
        "name": name or _run_name(model_sec, task_sec),
        "data": data_sec, "model": model_sec, "task": task_sec,
        "optimizer": optimizer if isinstance(optimizer, dict) else {"name": optimizer, "lr": lr,
                                                                    "weight_decay": weight_decay},
        "schedule": schedule if isinstance(schedule, dict) else {"name": schedule},
        "trainer": {"max_epochs": epochs, "seed": seed, "compile": compile, "monitor": monitor,
                    "mode": "max" if monitor.rsplit("/", 1)[-1] in _HIGHER_IS_BETTER else "min",
                    "early_stopping_patience": patience, "progress": ("off", "auto", "lines")[verbose],
                    **({"precision": precision} if precision else {}), **({"device": str(device)} if device else {})},
    }
    cfg = build_config(apply_overrides(raw, list(overrides)), modules)
    if verbose and _is_main():
        for line in notices:
            print(f"strata: {line}", file=sys.stderr)
    if cfg.data.unlabelled and cfg.data.name == "python":  # y = -1 marked the unlabelled examples
        from strata.data.unlabelled import with_unlabelled

        bundle = with_unlabelled(bundle, cfg.data, "python")
    if "model" in modules and "task" not in modules:
        _check_output(modules["model"], bundle, cfg.task.name)
    trainer = Trainer(cfg, run_dir=run_dir, resume=resume, bundle=bundle, callbacks=tuple(callbacks))
    folder = RunFolder(trainer.run_dir)
    try:
        summary = trainer.fit()
        task_module = trainer.task
        if folder.has_checkpoint("best"):  # before the processes part: sharded weights take their slices
            trainer.strategy.load_full_state_dict(task_module, folder.load_weights("best")[0])
    finally:
        trainer.dist.teardown()
    task_module.eval()
    return Run(trainer.run_dir, cfg, task_module, dict(trainer.info), summary)


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_name(model_sec: dict, task_sec: dict) -> str:
    base = model_sec.get("name", "model").rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".py")
    return f"{base.lower()}-{task_sec.get('name', 'task').rsplit(':', 1)[-1].lower()}"


def _check_output(model: nn.Module, bundle, task: str) -> None:
    """The user's module on two training examples, against what the task needs of its output."""
    from strata.train.loader import EpochBatches

    info = bundle.info
    if task not in ("classify", "semi_supervised", "regress"):
        return
    _, batch = next(EpochBatches(bundle.train, 2, False, 0, torch.device("cpu"), collate=bundle.collate).epoch(0))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["x"].to(device) if torch.is_tensor(batch["x"]) else batch["x"])
    except Exception as e:
        shape = list(batch["x"].shape) if torch.is_tensor(batch["x"]) else type(batch["x"]).__name__
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"the model fails on a batch of inputs shaped {shape} ({type(e).__name__}: {first}); "
                        "make its first layer take that shape") from e
    finally:
        model.train(was)
    got = list(out.shape) if torch.is_tensor(out) else type(out).__name__
    b = len(batch["y"]) if "y" in batch else 2
    if task in ("classify", "semi_supervised"):
        k = info["num_classes"]
        if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != b or out.shape[1] < k:
            raise DataError(f"the model's output has shape {got} for a batch of {b}; task '{task}' expects "
                            f"[{b}, {k}]: one score (logit) per class for the {k} classes in the labels 0..{k - 1}")
        if out.shape[1] > k:  # more outputs than the labels use: classes the data never shows
            info["num_classes"] = int(out.shape[1])
            info["class_names"] = list(info["class_names"]) + [str(i) for i in range(k, int(out.shape[1]))]
    else:
        k = info.get("num_outputs", 1)
        if not torch.is_tensor(out) or out.ndim != 2 or list(out.shape) != [b, k]:
            raise DataError(f"the model's output has shape {got} for a batch of {b}; task 'regress' expects "
                            f"[{b}, {k}]: one column per target (end the model with nn.Linear(..., {k}))")


# ---------------------------------------------------------------------------------------------
# The Run


class Run:
    """A trained run: its folder, config, task (with the best weights), data facts and results."""

    def __init__(self, run_dir, cfg, task: nn.Module, info: dict, summary: dict | None = None,
                 checkpoint: str | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.task = task
        self.info = info
        self._summary = summary
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, model={self.cfg.model.name!r}, task={self.cfg.task.name!r})"

    @property
    def model(self) -> nn.Module:
        """The trained network (the user's own module, when one was given)."""
        return getattr(self.task, "model", self.task)

    @property
    def summary(self) -> dict:
        """Final metrics, wall time, device, torch version, seed, weights_sha256 (summary.json)."""
        if self._summary is None:
            from strata.run_folder import RunFolder

            self._summary = RunFolder(self.run_dir).read_summary() or {}
        return self._summary

    @property
    def history(self) -> list[dict]:
        """One dict per epoch: its number, training loss, learning rate and validation metrics."""
        from strata.run_folder import RunFolder

        epochs: dict[int, dict] = {}
        for rec in RunFolder(self.run_dir).read_metrics():
            if rec.get("event") not in ("train", "val"):
                continue
            row = epochs.setdefault(rec["epoch"], {"epoch": rec["epoch"]})
            for k, v in rec.items():
                if k not in ("event", "epoch", "time"):
                    row[k if "/" in k or k in ("step", "lr") else f"{rec['event']}/{k}"] = v
        return [epochs[e] for e in sorted(epochs)]

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.task.parameters()), torch.device("cpu"))

    def _encode(self, inputs) -> dict:
        from strata.data import DATASETS
        from strata.data.memory import encode_arrays

        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, (str, Path)) for i in inputs):
            spec = DATASETS.get(self.cfg.data.name)
            return spec.encode_inputs([str(i) for i in inputs], self.info, self.run_dir)
        if self.cfg.data.name == "python":
            return {"x": encode_arrays(inputs, self.info)}
        key = getattr(self.task, "input_key", "x")
        return {key: encode_arrays(inputs, {k: v for k, v in self.info.items() if k != "standardize"})
                if self.info.get("in_shape") else torch.as_tensor(inputs)}

    def predict(self, inputs=None, *, user=None, item=None, top: int | None = None) -> list[dict] | dict:
        """What `strata predict RUN_DIR INPUTS --json` prints under "predictions", one dict per example.
        inputs: arrays or tensors (one example or a batch, raw as in training: the run's own encoding
        is applied), file paths, or strings, as the run's data set reads them.
        A rating or ranking run answers `predict(user=U, item=I)` or `predict(user=U, top=N)` with the
        dict `strata predict RUN_DIR --user U ... --json` prints."""
        from strata.train.loader import to_device

        if user is not None or item is not None or top is not None:
            request = {k: v for k, v in (("user", user), ("item", item), ("top", top)) if v is not None}
            with torch.no_grad():
                return self.task.recommend(request, self.run_dir)

        batch = to_device(self._encode(inputs), self.device)
        self.task.eval()
        with torch.no_grad():
            return self.task.predict_step(batch)

    def export(self, out=None, *, format: str = "onnx", inputs=None) -> dict:
        """`strata export RUN_DIR`: the model as an ONNX (or torch.export `pt2`) file with its
        preprocessing JSON beside it, checked against torch on real inputs (the run's data, or `inputs`:
        arrays or files as predict takes them, needed for a run trained on arrays). Returns what was
        written and the measured difference."""
        from strata.export import export_run

        which = "last" if Path(self.checkpoint or "best").name == "last" else "best"
        own = self.cfg.model.module if self.cfg.model.name.startswith("python:") else None
        return export_run(self.run_dir, fmt=format, out=out, which=which, model=own, inputs=inputs)

    def evaluate(self, data=None, split: str = "test", batch_size: int | None = None) -> dict:
        """Metrics on `data` ((x, y) arrays, a Dataset, ...: encoded as training encoded its data), or
        without data on the run's own `split` of its registered data set, as `strata evaluate`."""
        from strata.data.base import TensorSplit
        from strata.data.memory import ItemsAsDicts, encode_arrays, encode_with, split_xy
        from strata.train.evaluation import evaluate

        bs = batch_size or self.cfg.data.eval_batch_size or 2 * self.cfg.data.batch_size
        if data is None:
            from strata.evaluate import evaluate_run

            return evaluate_run(self.run_dir, split, device=str(self.device))
        if isinstance(data, torch.utils.data.DataLoader):
            data = data.dataset
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, TensorSplit):
            dataset = ItemsAsDicts(data)
        else:
            x, y = split_xy(data, "data")
            tensors = {"x": encode_arrays(x, self.info, "x")}
            if y is not None:
                classes = "num_classes" in self.info
                names = self.info.get("class_names") if classes and _strings(y) else None
                tensors["y"] = encode_with(y, names, classes, "y", None)
                if len(tensors["y"]) != len(tensors["x"]):
                    raise DataError(f"x and y differ in length: {len(tensors['x']):,} and {len(tensors['y']):,}")
            dataset = TensorSplit(tensors)
        return evaluate(self.task, dataset, split, bs, self.device, None)


def _strings(y) -> bool:
    import numpy as np

    return not isinstance(y, torch.Tensor) and np.asarray(y).dtype.kind in "USO"


# ---------------------------------------------------------------------------------------------
# load


def load(run_dir, model: nn.Module | None = None, which: str = "best", device: str | torch.device = "cpu") -> Run:
    """A trained run from its folder, as strata.fit returned it: config, task with the `best` weights
    (else `last`), data facts. A run of a user's module rebuilds it from the recorded class and
    options; `model=` takes the user's instance instead (a class defined in a script or notebook)."""
    from strata.build import build_config
    from strata.device import pick_device
    from strata.run_folder import RunFolder
    from strata.tasks import TASKS, build_task
    from strata.tasks.base import Task
    from strata.train.checkpoint import check_compatible

    folder = RunFolder(run_dir).require()
    raw = folder.read_raw_config()
    modules: dict = {}
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: expected the torch.nn.Module instance the run was trained with, got "
                              f"{type(model).__name__}")
        modules = {"task": model, "model": model} if isinstance(model, Task) else {"model": model}
    else:
        task_name = raw.get("task", {}).get("name", "")
        if ":" in task_name and task_name not in TASKS:  # the user's own Task class
            task_module = rebuild(raw["task"], "task")
            modules = {"task": task_module, "model": task_module}
    try:
        cfg = build_config(raw, modules)
    except ConfigError as e:
        raise ConfigError(f"{folder.config}: {e}") from None
    info = folder.read_info()
    task = build_task(cfg, info)
    weights, ckpt = folder.load_weights(which)
    check_compatible(task.state_dict(), weights, str(ckpt))
    task.load_state_dict(weights)
    task.to(device if isinstance(device, torch.device) else pick_device(device or "auto")).eval()
    return Run(folder.path, cfg, task, info, checkpoint=str(ckpt))
