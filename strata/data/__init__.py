"""Data sets, file formats, download + checksum + cache, transforms, tokenizers."""

from strata.registry import Registry

DATASETS = Registry("dataset")


def load_data(data_cfg):
    """DataConfig -> DataBundle, with the data set's own options validated by its Config."""
    from strata.config import from_dict

    spec = DATASETS.get(data_cfg.name)
    opts = from_dict(spec.Config, data_cfg.options, "[data]") if spec.Config else None
    return spec.load(data_cfg, opts)


from strata._autoload import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
