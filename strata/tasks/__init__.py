"""Tasks: what is optimised and measured (see base.py for the contract the Trainer relies on)."""

from strata.registry import Registry

TASKS = Registry("task")


def build_task(cfg, info: dict):
    """cfg: the RunConfig. The task builds its own model(s) from cfg.model, unless the user gave
    their own Task instance from Python (strata.fit(MyTask(), ...)): that one is used as built."""
    from strata.config import component_config

    if cfg.task.module is not None:
        cfg.task.module.info = info
        return cfg.task.module
    cls = TASKS.get(cfg.task.name)
    task_cfg = component_config(cls, cfg.task.options, "task", cfg.task.parsed, **info)
    return cls(task_cfg, cfg.model, info)


# Each family registers itself when its file is imported; this is the list of them.
from strata.tasks import (  # noqa: E402,F401
    classify, contrastive, diffusion, gan, language_model, ranking, rating, reconstruct, regress, semi_supervised, seq2seq,
    sequence_classify, vae,
)
