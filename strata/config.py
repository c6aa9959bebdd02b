"""Typed run configuration, validated once at the edge (TOML load), carried in every checkpoint.

A run config is a TOML file with the sections [data], [model], [task], [optimizer], [schedule] and
[trainer]. [data], [model] and [task] name a registered component with `name = "..."`; the rest of
their keys are checked against that component's own frozen dataclass config, so a typo in any key
is caught at load with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from strata.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from strata.registry import closest

# ---------------------------------------------------------------------------------------------
# Generic dataclass <-> dict with helpful errors


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = closest(str(value), [str(c) for c in choices])
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML has inf and nan
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, where: str, ignore: tuple[str, ...] = ()):
    """Build dataclass `cls` from a dict, naming the key of every problem (`[optimizer] lr: ...`)."""
    if not isinstance(data, dict):  # `trainer = 3` in the file, or --set trainer=3
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    rest = getattr(cls, "REST", None)  # a dict field that takes the keys not declared (a constructor's **kwargs)
    names = {f.name for f in fields(cls) if f.init} - {rest}
    kwargs = {rest: {}} if rest else {}
    for key, value in data.items():
        if key in ignore:
            continue
        if key not in names:
            if rest:
                kwargs[rest][key] = value
                continue
            raise ConfigError(f"{where}: unknown key '{key}'{closest(key, names)}; valid keys: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], f"{where} {key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj) -> dict:
    """Plain dict of a dataclass, tuples as lists and None values dropped (TOML has no null)."""

    def clean(v):
        if dataclasses.is_dataclass(v):
            return {f.name: clean(getattr(v, f.name)) for f in fields(v) if getattr(v, f.name) is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        return v

    return clean(obj)


def check(cond: bool, where: str, message: str) -> None:
    """Validation inside __post_init__: raise `[section] key: message` when `cond` is false."""
    if not cond:
        raise ConfigError(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# The sections every run has


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, ...] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8
    alpha: float = 0.99  # rmsprop smoothing

    def __post_init__(self):
        # upper bounds far above any useful value, below what overflows float32 optimiser state
        check(self.lr > 0, "[optimizer] lr", f"must be > 0, got {self.lr}")
        check(self.lr <= 1e3, "[optimizer] lr", f"must be <= 1000 (usually 1e-5 .. 1), got {self.lr}")
        check(0 < self.eps <= 1, "[optimizer] eps", f"must be in (0, 1] (usually 1e-8), got {self.eps}")
        check(0 <= self.alpha <= 1, "[optimizer] alpha", f"must be in [0, 1], got {self.alpha}")
        check(0 <= self.weight_decay <= 1e3, "[optimizer] weight_decay",
              f"must be >= 0 and <= 1000 (usually 0 .. 0.1), got {self.weight_decay}")
        check(0 <= self.momentum < 1, "[optimizer] momentum", f"must be in [0, 1), got {self.momentum}")
        check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), "[optimizer] nesterov",
              "needs name = 'sgd' and momentum > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "[optimizer] betas",
              f"must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "step", "cosine", "onecycle", "plateau"] = "constant"
    warmup_steps: int = 0  # constant, cosine: linear warm-up from 0
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the peak
    step_size: int = 1  # step: decay every this many epochs
    gamma: float = 0.1  # step: decay factor
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    factor: float = 0.5  # plateau: lr multiplier when the monitored metric stalls
    patience: int = 2  # plateau: validations without improvement before reducing
    min_lr: float = 0.0  # plateau

    def __post_init__(self):
        check(self.warmup_steps >= 0, "[schedule] warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, "[schedule] min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.step_size >= 1, "[schedule] step_size", f"must be >= 1, got {self.step_size}")
        check(0 < self.gamma <= 1, "[schedule] gamma", f"must be in (0, 1], got {self.gamma}")
        check(0 < self.pct_start < 1, "[schedule] pct_start", f"must be in (0, 1), got {self.pct_start}")
        check(0 < self.factor < 1, "[schedule] factor", f"must be in (0, 1), got {self.factor}")
        check(self.patience >= 0, "[schedule] patience", f"must be >= 0, got {self.patience}")


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = 0  # 0: no step limit; otherwise stop after this many optimiser steps
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    deterministic: bool = False
    grad_accum: int = 1
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    val_every_n_steps: int = 0  # 0: validate at the end of every epoch
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    sanity_val_batches: int = 2  # validation batches run before training: a wrong monitor fails at once; 0 skips
    early_stopping_patience: int = 0  # validations without improvement; 0 disables
    checkpoint_every_n_steps: int = 0  # 0: only at validation / epoch end
    log_every_s: float = 30.0  # non-terminal progress: at most one line this often (and one per epoch)
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    tensorboard: bool = False
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN / inf loss or gradient: stop the run, or skip the step
    # under torchrun: "ddp" replicates the model (DistributedDataParallel), "fsdp" shards it (FSDP2);
    # auto = ddp. Ignored in one process, except that "fsdp" writes its sharded checkpoint format.
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"

    def __post_init__(self):
        check(self.max_epochs >= 1, "[trainer] max_epochs", f"must be >= 1, got {self.max_epochs}")
        check(self.max_steps >= 0, "[trainer] max_steps", f"must be >= 0, got {self.max_steps}")
        check(0 <= self.seed < 2**32, "[trainer] seed", f"must be in [0, 2**32), got {self.seed}")
        check(self.grad_accum >= 1, "[trainer] grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.grad_clip >= 0, "[trainer] grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(self.val_every_n_steps >= 0, "[trainer] val_every_n_steps", f"must be >= 0, got {self.val_every_n_steps}")
        check(self.sanity_val_batches >= 0, "[trainer] sanity_val_batches",
              f"must be >= 0, got {self.sanity_val_batches}")
        check(self.early_stopping_patience >= 0, "[trainer] early_stopping_patience",
              f"must be >= 0, got {self.early_stopping_patience}")
        check(self.checkpoint_every_n_steps >= 0, "[trainer] checkpoint_every_n_steps",
              f"must be >= 0, got {self.checkpoint_every_n_steps}")
        ok = self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        check(ok, "[trainer] device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    batch_size: int = 128
    eval_batch_size: int = 0  # 0: twice batch_size
    limit: int = 0  # at most this many training examples; 0 = all
    labels_per_class: int = 0  # exactly this many training examples of every class; 0 = all
    # keep the training examples that labels_per_class / limit leave out, without their labels, for a task
    # that learns from unlabelled examples too (semi_supervised); batches then also hold "u"
    unlabelled: bool = False
    unlabelled_ratio: int = 7  # unlabelled examples per labelled one in a training batch
    val_fraction: float = 0.1  # held out of the training files for model selection, when the set has no val split
    split_seed: int = 0  # fixes which examples are held out, independent of trainer.seed
    options: dict = field(default_factory=dict)  # the data set's own keys, validated by it
    parsed: Any = field(default=None, compare=False, repr=False)  # those keys as the data set's Config

    def __post_init__(self):
        check(self.batch_size >= 1, "[data] batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.eval_batch_size >= 0, "[data] eval_batch_size", f"must be >= 0, got {self.eval_batch_size}")
        check(self.limit >= 0, "[data] limit", f"must be >= 0, got {self.limit}")
        check(self.labels_per_class >= 0, "[data] labels_per_class", f"must be >= 0, got {self.labels_per_class}")
        check(self.unlabelled_ratio >= 1, "[data] unlabelled_ratio", f"must be >= 1, got {self.unlabelled_ratio}")
        check(0 <= self.val_fraction < 1, "[data] val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check(0 <= self.split_seed < 2**32, "[data] split_seed", f"must be in [0, 2**32), got {self.split_seed}")


@dataclass(frozen=True)
class ComponentConfig:
    """[model] or [task]: a registered name and that component's own keys (validated by it)."""

    name: str
    options: dict = field(default_factory=dict)
    # The user's own torch.nn.Module instance (strata.fit), used as built; never written to TOML.
    module: Any = field(default=None, compare=False, repr=False)
    # The component's own Config, validated once when the run config was built (the user's keys and
    # defaults); building fills in the facts of the data (num_classes, in_shape, ...) with replace().
    parsed: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RunConfig:
    name: str
    data: DataConfig
    model: ComponentConfig
    task: ComponentConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trainer: TrainerConfig = TrainerConfig()

    def __post_init__(self):
        check_run_name(self.name)

    def to_dict(self) -> dict:
        """The TOML layout: component options flattened back into their section."""
        d = {"name": self.name}
        data = to_dict(self.data)
        data.pop("parsed", None)  # the same keys as options, typed
        data.update(data.pop("options"))
        d["data"] = data
        for sec in ("model", "task"):
            comp = getattr(self, sec)
            d[sec] = {"name": comp.name, **to_dict(comp.options)}
        d["optimizer"] = to_dict(self.optimizer)
        d["schedule"] = to_dict(self.schedule)
        d["trainer"] = to_dict(self.trainer)
        return d


SECTIONS = ("name", "data", "model", "task", "optimizer", "schedule", "trainer")
NAME_MAX_BYTES = 200  # + "-<timestamp>" stays under the 255 bytes file systems allow a folder name


def check_run_name(name) -> None:
    """`name` becomes the folder runs/<name>-<timestamp>: a plain folder name, nothing that leads
    elsewhere (`..`, `/`) or that a file system refuses."""
    fix = 'e.g. name = "mnist-cnn"'
    check(isinstance(name, str) and bool(name), "name", f"expected a non-empty string, got {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that are not UTF-8, from the command line
        raise ConfigError(f"name: {name!r} is not valid UTF-8 text; use letters, digits, '-', '_' or '.' "
                          f"({fix})") from None
    check(name not in (".", "..") and not any(c in "/\\" or ord(c) < 32 for c in name), "name",
          f"{name!r} is not a plain folder name (the run folder is runs/<name>-<timestamp>); leave out '/', '\\' "
          f"and control characters, and do not use '.' or '..' ({fix})")
    check(size <= NAME_MAX_BYTES, "name",
          f"{size} bytes is too long for a folder name (at most {NAME_MAX_BYTES}); shorten it ({fix})")


def parse_value(text: str):
    """A --set value: TOML syntax when it parses (1e-3, true, [1, 2], "s"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:20]}...: nested too deeply for a config value") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`--set section.key=value`, repeatable. Unknown sections are caught here, unknown keys at validation."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set trainer.max_epochs=3")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"--set {path}: unknown section '{parts[0]}'{closest(parts[0], SECTIONS)}; "
                              f"sections: {', '.join(SECTIONS[1:])}")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {path}: '{p}' is not a section")
        node[parts[-1]] = parse_value(text.strip())
    return raw


def dump_toml(cfg: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())


def component_config(comp, options: dict, section: str, parsed=None, **inferred):
    """The component's own Config from the section's options, filling keys the data implies
    (in_channels, num_classes, vocab_size, ...) when the user left them out. `parsed` is that Config
    as validated when the run config was built: the facts are set on it with replace(), so the
    user's keys are not parsed twice. A component may narrow the keys the data fills with
    `data_facts` (a user's class: the facts its constructor declares)."""
    cfg_cls = comp.Config
    if cfg_cls is None:
        if options:
            raise ConfigError(f"[{section}]: '{options and next(iter(options))}' is not a key of this component; "
                              "it takes no options besides name")
        return None
    names = set(getattr(comp, "data_facts", (f.name for f in fields(cfg_cls))))
    facts = {k: v for k, v in inferred.items() if k in names and k not in options}
    if parsed is None or type(parsed) is not cfg_cls:
        return from_dict(cfg_cls, {**facts, **options}, f"[{section}]")
    hints = typing.get_type_hints(cfg_cls)
    facts = {k: _coerce(v, hints[k], f"[{section}] {k}") for k, v in facts.items()}
    try:
        return dataclasses.replace(parsed, **facts)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}]: {e}") from None
