"""Model families, one file each. Every model class has a frozen dataclass `Config` and takes it in
__init__; keys the data implies (in_channels, num_classes, vocab_size, ...) are filled in by
`build_model` when the user leaves them out."""

from strata.registry import Registry

MODELS = Registry("model")


def build_model(name: str, options: dict, section: str = "model", **inferred):
    from strata.config import component_config

    cls = MODELS.get(name)
    return cls(component_config(cls, options, section, **inferred))


from strata._autoload import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
