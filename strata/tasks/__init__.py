"""Tasks: what is optimised and measured (see base.py for the contract the Trainer relies on)."""

from strata.registry import Registry

TASKS = Registry("task")


def build_task(cfg, info: dict):
    """cfg: the RunConfig. The task builds its own model(s) from cfg.model."""
    from strata.config import component_config

    cls = TASKS.get(cfg.task.name)
    task_cfg = component_config(cls, cfg.task.options, "task", **info)
    return cls(task_cfg, cfg.model, info)


from strata._autoload import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
