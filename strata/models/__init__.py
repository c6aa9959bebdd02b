"""Model families, one file each. Every model class has a frozen dataclass `Config` and takes it in
__init__; keys the data implies (in_channels, num_classes, vocab_size, ...) are filled in by
`build_model` when the user leaves them out."""

from strata.registry import Registry


class ModelRegistry(Registry):
    """The registered families, and the user's own classes: a name with a ':' ("nets.py:MyNet",
    "mypackage.nets:MyNet") is imported and adapted by strata.models.user."""

    def get(self, name: str):
        if ":" in name:
            from strata.models.user import user_model

            return user_model(name)
        return super().get(name)


MODELS = ModelRegistry("model")


def build_model(model, options: dict | None = None, section: str = "model", **inferred):
    """model: the [model] section (a ComponentConfig), or a registered name with `options`.
    A section that carries the user's own module instance (`strata.fit(my_module, ...)`) returns it
    as it is: the facts of the data are for constructors, and that module is already built."""
    from strata.config import component_config

    parsed = None
    if not isinstance(model, str):
        if getattr(model, "module", None) is not None:
            return model.module
        model, options, parsed = model.name, model.options, model.parsed
    cls = MODELS.get(model)
    return cls(component_config(cls, options or {}, section, parsed, **inferred))


# Each family registers itself when its file is imported; this is the list of them.
from strata.models import (  # noqa: E402,F401
    autoencoder, autorec, cnn, diffusion, gan, mlp, pretrained, recommender, rnn, sequential, transformer, vae,
)
