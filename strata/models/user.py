"""Your own networks: `[model] name = "nets.py:MyNet"` (a file) or `"mypackage.nets:MyNet"` (a module).

The class is any torch.nn.Module subclass. The [model] section's other keys are its constructor's
keyword arguments, checked against the constructor's signature at config load (unknown keys get a
did-you-mean, annotated types are enforced). Facts of the data (DATA_FACTS: number of classes, input
shape, vocabulary size, ...) reach only the parameters the constructor declares by those names, and
only when the user left them out; a constructor with **kwargs receives the user's keys and nothing
more.

Files are imported under a synthetic module name derived from their absolute path, so one file is
executed once per process, and its classes pickle and compile like any module's. The run folder's
config.toml stores the absolute path of the file (see `absolute_spec`): evaluate, predict, --resume
and torchrun import it again from any working folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

from torch import nn

from strata.errors import ConfigError
from strata.registry import closest

# Keys of a data set's info that fill constructor parameters of the same name (when declared).
DATA_FACTS = ("num_classes", "num_outputs", "in_channels", "in_features", "in_shape", "image_size", "vocab_size",
              "src_vocab_size", "tgt_vocab_size", "pad_id", "max_len", "context_size")

_FILES: dict[str, Path] = {}  # synthetic module name -> the file it was imported from


def is_spec(name: str) -> bool:
    """A user class ("nets.py:MyNet", "pkg.nets:MyNet") rather than a registered model name."""
    return ":" in name


def _split(spec: str) -> tuple[str, str]:
    where, _, qualname = spec.rpartition(":")  # rpartition: a Windows path has a ':' of its own
    if not where or not qualname:
        raise ConfigError(f"'{spec}' is not a class spec; write \"path/to/nets.py:MyNet\" (a file) or "
                          "\"mypackage.nets:MyNet\" (an importable module)")
    return where, qualname


def _is_file(where: str) -> bool:
    return where.endswith(".py")


def _find_file(where: str, spec: str, base_dir: str | Path | None) -> Path:
    path = Path(where).expanduser()
    tried = [path] if path.is_absolute() else [Path(d).absolute() / path for d in (base_dir, Path.cwd()) if d]
    for p in tried:
        if p.is_file():
            return p.resolve()
    raise ConfigError(f"'{spec}': the file {where} does not exist (looked at {', '.join(map(str, tried))}); give its "
                      "path relative to the config file, or an absolute one")


def absolute_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """The spec with a file's path made absolute (relative: to base_dir, then the current folder),
    so that it imports the same class from any working folder. Module specs are returned as given."""
    where, qualname = _split(spec)
    return f"{_find_file(where, spec, base_dir)}:{qualname}" if _is_file(where) else spec


def _module_name(path: Path) -> str:
    """A flat, stable name per file: the same in every process (torchrun ranks, resumed runs)."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"strata_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _import_failed(e: BaseException, spec: str, file: str | None) -> ConfigError:
    """File and line of the failure: in the user's file when the traceback passes through it,
    else the deepest frame outside the import machinery."""
    if isinstance(e, SyntaxError) and e.filename:
        return ConfigError(f"{e.filename}, line {e.lineno}: SyntaxError: {e.msg}; fix the file")
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    mine = [f for f in frames if file and Path(f.filename) == Path(file)]
    at = (mine or frames or [None])[-1]
    where = f"{at.filename}, line {at.lineno}" if at else (file or spec)
    return ConfigError(f"importing '{spec}' failed at {where}: {_first_line(e)}; fix the file "
                       "(--debug shows the traceback)")


def _import_file(path: Path, spec: str):
    name = _module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # the file may import its neighbours, as when run as a script
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up there
    try:
        mod_spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if not isinstance(e, Exception):
            raise
        raise _import_failed(e, spec, str(path)) from e
    _FILES[name] = path
    return module


def _import_module(where: str, spec: str):
    if where == "__main__":
        raise ConfigError(f"'{spec}': a class of a script or notebook (__main__) cannot be imported by a new process; "
                          f"move it into a file and name that: \"nets.py:{spec.rpartition(':')[2]}\"")
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as e:  # a parent package that is missing or fails
        if isinstance(e, ModuleNotFoundError) and e.name and where.startswith(e.name):
            found = None
        else:
            raise _import_failed(e, spec, None) from e
    if found is None:
        raise ConfigError(f"'{spec}': no module named '{where}'; put the folder that holds it on PYTHONPATH, or name "
                          f"the file: \"path/to/{where.rsplit('.', 1)[-1]}.py:{spec.rpartition(':')[2]}\"")
    try:
        return importlib.import_module(where)
    except Exception as e:
        raise _import_failed(e, spec, found.origin) from e


# The [model] / [task] name strata.fit records for an instance that a new process cannot build again:
# its class lives in a script or notebook (__main__), or its constructor arguments are not plain data
# it could read back (nn.Sequential(...) of layers). Loading such a run needs the instance.
INSTANCE_ONLY = "python:"


def load_class(spec: str, base_dir: str | Path | None = None) -> type:
    """The torch.nn.Module subclass that `spec` names: "path/to/nets.py:MyNet" (relative paths are
    resolved against base_dir, then the current folder) or "mypackage.nets:MyNet"."""
    if spec.startswith(INSTANCE_ONLY):
        qual = spec.rsplit(":", 1)[-1]
        why = ("was defined in a script or notebook (__main__), which a new process cannot import"
               if "__main__:" in spec else "was built from constructor arguments strata could not record")
        raise ConfigError(f"this run's class {qual} {why}; load the run from Python with the instance: "
                          f"strata.load(run_dir, model={qual}(...)) with the same architecture")
    where, qualname = _split(spec)
    if _is_file(where):
        path = _find_file(where, spec, base_dir)
        module, shown = _import_file(path, spec), str(path)
    else:
        module, shown = _import_module(where, spec), where
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            mine = sorted(n for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, nn.Module)
                          and c.__module__ == module.__name__)
            raise ConfigError(f"'{spec}': {shown} has no class '{qualname}'{closest(qualname, mine)}; its "
                              f"torch.nn.Module classes: {', '.join(mine) or 'none'}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        what = f"a {type(obj).__name__}" if not isinstance(obj, type) else "a class that does not subclass it"
        raise ConfigError(f"'{spec}': {qualname} is {what}, not a torch.nn.Module subclass; name a class that "
                          "subclasses torch.nn.Module")
    return obj


def class_spec(cls: type) -> str | None:
    """The spec that imports `cls` again in a new process: the absolute "file.py:QualName" for a class
    load_class read from a file, "module:QualName" for an importable module, None for a class of
    __main__ (a script or notebook) or one defined inside a function."""
    module, qualname = cls.__module__, cls.__qualname__
    if "<locals>" in qualname or module == "__main__":
        return None
    if module in _FILES:
        return f"{_FILES[module]}:{qualname}"
    loaded = sys.modules.get(module)
    if loaded is None or getattr(loaded, "__spec__", None) is None:
        return None
    return f"{module}:{qualname}"


def constructor_options(cls: type) -> tuple[dict[str, inspect.Parameter], str | None]:
    """The parameters the constructor declares by name ({name: Parameter}, without self and *args),
    and the name of its **kwargs parameter (None when it has none)."""
    declared, rest = {}, None
    for p in inspect.signature(cls).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            rest = p.name
        elif p.kind is not p.VAR_POSITIONAL:
            declared[p.name] = p
    return declared, rest


class _Unset:
    def __repr__(self):
        return "<not given>"


UNSET = _Unset()


def _hints(cls: type, declared: dict[str, inspect.Parameter]) -> dict[str, Any]:
    """Annotations the config check can enforce; Any where they cannot be resolved."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # forward references to names the module does not define at class level
        hints = {}
    return {n: hints.get(n, p.annotation if not isinstance(p.annotation, str) else Any) for n, p in declared.items()}


class UserModel:
    """What MODELS.get returns for a class spec: `Config`, a frozen dataclass synthesised from the
    constructor's signature (every field defaults to UNSET, so the constructor's own defaults apply),
    and a call that builds the model from it."""

    def __init__(self, cls: type, spec: str):
        self.cls, self.spec = cls, spec
        self.declared, rest = constructor_options(cls)
        hints = _hints(cls, self.declared)
        specs = [(n, Any if hints[n] is inspect.Parameter.empty else hints[n], dataclasses.field(default=UNSET))
                 for n in self.declared]
        if rest:  # collects the keys the constructor does not declare (see strata.config.from_dict)
            specs.append((rest, dict, dataclasses.field(default_factory=dict)))
        self.Config = dataclasses.make_dataclass(f"{cls.__name__}Options", specs, frozen=True,
                                                 namespace={"REST": rest})
        self.data_facts = [n for n in DATA_FACTS if n in self.declared]  # filled by strata.config.component_config

    def __call__(self, cfg) -> nn.Module:
        kwargs = {n: getattr(cfg, n) for n in self.declared if getattr(cfg, n) is not UNSET}
        missing = [n for n, p in self.declared.items() if n not in kwargs and p.default is p.empty]
        if missing:
            raise ConfigError(f"[model] {missing[0]}: {self.cls.__qualname__} needs it and the data does not give it; "
                              f"add {missing[0]} = ... to [model] (facts of the data fill parameters named "
                              f"{', '.join(DATA_FACTS)})")
        args = []  # positional-only parameters lead the signature: pass the given ones in order
        for n, p in self.declared.items():
            if p.kind is not p.POSITIONAL_ONLY or n not in kwargs:
                break
            args.append(kwargs.pop(n))
        if self.Config.REST:
            kwargs.update(getattr(cfg, self.Config.REST))
        try:
            return self.cls(*args, **kwargs)
        except Exception as e:
            raise _built_failed(e, self) from e


def _built_failed(e: Exception, model: UserModel) -> ConfigError:
    file = inspect.getsourcefile(model.cls)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if file and Path(f.filename) == Path(file)]
    at = f" at {frames[-1].filename}, line {frames[-1].lineno}" if frames else ""
    return ConfigError(f"[model] '{model.spec}': building {model.cls.__qualname__} failed{at}: {_first_line(e)}; "
                       "check the [model] keys against its constructor (--debug shows the traceback)")


_ADAPTERS: dict[str, UserModel] = {}


def user_model(spec: str) -> UserModel:
    """The model component for a class spec (one per spec and process)."""
    spec = absolute_spec(spec)
    if spec not in _ADAPTERS:
        _ADAPTERS[spec] = UserModel(load_class(spec), spec)
    return _ADAPTERS[spec]
