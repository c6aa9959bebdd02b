"""Data sets, file formats, download + checksum + cache, transforms, tokenizers."""

from strata.registry import Registry

DATASETS = Registry("dataset")


def load_data(data_cfg):
    """DataConfig -> DataBundle, with the data set's own options validated by its Config."""
    from strata.config import from_dict

    spec = DATASETS.get(data_cfg.name)
    opts = data_cfg.parsed if isinstance(data_cfg.parsed, spec.Config or ()) else \
        from_dict(spec.Config, data_cfg.options, "[data]") if spec.Config else None
    bundle = spec.load(data_cfg, opts)
    if data_cfg.unlabelled:
        from strata.data.unlabelled import with_unlabelled

        bundle = with_unlabelled(bundle, data_cfg, data_cfg.name)
    if bundle.train is not None:  # the sets that hold out val themselves
        from strata.data.splits import check_training_left

        check_training_left(len(bundle.train), data_cfg)
    return bundle


# Each family registers itself when its file is imported; this is the list of them.
from strata.data import (  # noqa: E402,F401
    arrays, audio, digits, ett, folders, kddcup, memory, mnist, movielens, ratings, tables, text, translation,
)
