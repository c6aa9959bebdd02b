"""Building a run config: a raw TOML table (after --set overrides) checked against the registered
data sets, models and tasks, each component's keys against its own Config, once.

strata/config.py holds the typed sections and the dict <-> dataclass machinery that every component
uses; this module sits above the registries, so nothing a component imports leads back here.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from strata.config import (SECTIONS, ComponentConfig, DataConfig, OptimizerConfig, RunConfig, ScheduleConfig,
                           TrainerConfig, apply_overrides, from_dict, tomllib)
from strata.data import DATASETS
from strata.errors import ConfigError, StrataError
from strata.models import MODELS
from strata.models.user import absolute_spec, is_spec
from strata.registry import closest
from strata.tasks import TASKS


def _component_options(raw: dict, section: str, registry) -> tuple[str, dict]:
    """A component section -> (name, its own keys, those keys parsed into the component's Config)."""
    sec = dict(raw)
    if "name" not in sec:
        raise ConfigError(f"[{section}] name: missing; choose one of {', '.join(registry.names())}")
    name = sec.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"[{section}] name: expected a string, got {name!r}")
    try:
        comp = registry.get(name)
    except StrataError as e:
        raise ConfigError(f"[{section}] name: {e}") from None
    cfg_cls = getattr(comp, "Config", None)
    parsed = from_dict(cfg_cls, sec, f"[{section}]") if cfg_cls is not None else None
    return name, sec, parsed


def data_config(section: dict) -> DataConfig:
    """[data]: the keys every data set has, and the named set's own keys checked by its Config."""
    generic = {f.name for f in fields(DataConfig)} - {"options", "parsed"}
    name, options, parsed = _component_options({k: v for k, v in section.items() if k not in generic - {"name"}},
                                               "data", DATASETS)
    data = from_dict(DataConfig, {**{k: v for k, v in section.items() if k in generic}, "name": name,
                                  "options": options}, "[data]")
    return replace(data, parsed=parsed)


def build_config(raw: dict, modules: dict | None = None, base_dir: str | Path | None = None) -> RunConfig:
    """Validate a raw TOML dict (after overrides) into a RunConfig. `modules` maps "model" / "task"
    to instances the user built in Python (strata.fit, strata.load(..., model=...)): that section's
    name and options are recorded as given, not validated (the instance is already built).
    base_dir: the config file's folder, where a model file ([model] name = "nets.py:MyNet") is looked
    for before the current folder."""
    modules = modules or {}
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"unknown key '{key}'{closest(key, SECTIONS)}; a run config has: "
                              f"name, [data], [model], [task], [optimizer], [schedule], [trainer]")
    for sec in ("data", "model", "task"):
        if sec not in raw:
            raise ConfigError(f"[{sec}]: missing section; every run config needs [data], [model] and [task]")
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"[{sec}]: expected a table, got {raw[sec]!r}")
    name = raw.get("name", "run")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name: expected a non-empty string, got {name!r}")

    data = data_config(raw["data"])
    given = {sec: (dict(raw[sec]).pop("name", "module"), {k: v for k, v in raw[sec].items() if k != "name"}, None)
             for sec in ("model", "task") if modules.get(sec) is not None}
    model_raw = dict(raw["model"])
    if isinstance(model_raw.get("name"), str) and is_spec(model_raw["name"]) and "model" not in given:
        try:  # stored absolute: the run folder's config.toml imports it from any working folder
            model_raw["name"] = absolute_spec(model_raw["name"], base_dir)
        except ConfigError as e:
            raise ConfigError(f"[model] name: {e}") from None
    m_name, m_opts, m_parsed = given.get("model") or _component_options(model_raw, "model", MODELS)
    t_name, t_opts, t_parsed = given.get("task") or _component_options(raw["task"], "task", TASKS)
    if data.unlabelled and "task" not in given and not getattr(TASKS.get(t_name), "uses_unlabelled", False):
        learners = [n for n in TASKS.names() if getattr(TASKS.get(n), "uses_unlabelled", False)]
        raise ConfigError(f"[data] unlabelled = true keeps examples without their labels, which task '{t_name}' "
                          f"would never read; use [task] name = {' or '.join(repr(n) for n in learners)}, or "
                          "drop unlabelled")
    return RunConfig(
        name=name,
        data=data,
        model=ComponentConfig(m_name, m_opts, modules.get("model"), m_parsed),
        task=ComponentConfig(t_name, t_opts, modules.get("task"), t_parsed),
        optimizer=from_dict(OptimizerConfig, raw.get("optimizer", {}), "[optimizer]"),
        schedule=from_dict(ScheduleConfig, raw.get("schedule", {}), "[schedule]"),
        trainer=from_dict(TrainerConfig, raw.get("trainer", {}), "[trainer]"),
    )


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; `strata recipes` lists the shipped ones")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return build_config(apply_overrides(raw, list(overrides)), base_dir=path.parent)




def resolve_config(config, overrides=()) -> RunConfig:
    """A RunConfig from a TOML path, a dict in the TOML layout, or a RunConfig, with --set overrides."""
    import copy

    if isinstance(config, RunConfig):
        return build_config(apply_overrides(config.to_dict(), list(overrides))) if overrides else config
    if isinstance(config, dict):
        return build_config(apply_overrides(copy.deepcopy(config), list(overrides)))
    return load_config(config, overrides)
