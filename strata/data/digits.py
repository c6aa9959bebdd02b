"""scikit-learn's handwritten digits (the UCI optical-recognition test set, Alpaydin & Kaynak 1998):
1,797 images of 8x8 pixels with values 0..16, shipped inside scikit-learn, so no download.

The offline default data set. Splits: `test` is a fixed, stratified 25% (data.split_seed); `val`
is carved from the rest with data.val_fraction; data.limit caps the training images left.
Images become float32 in [0, 1] (value / 16), shape (N, 1, 8, 8), light strokes on a dark ground.
"""

from __future__ import annotations

import numpy as np

from strata.data import DATASETS
from strata.data import splits as S
from strata.data.images import ImageDataset, ImageSetConfig, image_bundle

TEST_FRACTION = 0.25


class Digits(ImageDataset):
    Config = ImageSetConfig
    files = ()
    license = "CC BY 4.0 (UCI Machine Learning Repository), shipped with scikit-learn (BSD-3-Clause)"
    description = "Handwritten digits 0-9, 8x8 grayscale, 1,797 images bundled with scikit-learn (offline)"
    splits = "test: fixed stratified 25% (split_seed); val: val_fraction of the rest; train: the remainder"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images[:, None] / 16.0).astype(np.float32), d.target.astype(np.int64)  # (N, 1, 8, 8)

    def load(self, data_cfg, opts):
        x, y = self.arrays()
        train, val, test, labelled = S.train_val_test(y, data_cfg, test_fraction=TEST_FRACTION, pool=True)
        parts = {"train": (x[train], y[train]), "val": None if val is None else (x[val], y[val]),
                 "test": (x[test], y[test])}
        return image_bundle(parts, [str(i) for i in range(10)], normalize=opts.normalize if opts else False,
                            labelled=labelled)


DATASETS.register("digits", Digits())
