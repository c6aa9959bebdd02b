"""MNIST (LeCun, Cortes, Burges 1998) and Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), from their
original gzip-compressed IDX files.

Splits: `test` is the official 10,000-image test set; `val` is carved from the 60,000 training
images (data.val_fraction, stratified, data.split_seed), so it is never trained on; data.limit caps
the training images that remain (seeded stratified subset). Images are float32 in [0, 1], shape
(N, 1, 28, 28), light strokes on a dark background; `normalize = true` standardises them with the
training split's mean/std instead.
"""

from __future__ import annotations

import numpy as np

from strata.data import DATASETS
from strata.data import splits as S
from strata.data.download import RemoteFile, fetch
from strata.data.idx import read_idx_cached
from strata.data.images import ImageDataset, ImageSetConfig, image_bundle
from strata.errors import DataError


class IdxImages(ImageDataset):
    """A 28x28 grayscale set stored as the four MNIST-style IDX files under `directory/`."""

    Config = ImageSetConfig
    splits = "train 60,000 (val carved from it with val_fraction) / test 10,000 (official)"

    def __init__(self, name, directory, sha256s, sizes, class_names, license, description):
        self.name = name
        self.class_names = class_names
        self.license = license
        self.description = description
        stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
        self.files = tuple(RemoteFile(f"{directory}/{s}.gz", h, b) for s, h, b in zip(stems, sha256s, sizes))

    def arrays(self):
        """(train images uint8 (60000, 28, 28), train labels, test images, test labels)."""
        out = []
        for f in self.files:
            path = fetch(f.path, f.sha256, dataset=self.name)
            out.append(read_idx_cached(path, ndim=3 if "images" in f.path else 1))
        xtr, ytr, xte, yte = out
        for x, y, which in ((xtr, ytr, "train"), (xte, yte, "test")):
            if len(x) != len(y) or x.shape[1:] != (28, 28):
                raise DataError(f"data set '{self.name}': {which} files disagree: images {list(x.shape)}, "
                                f"labels {list(y.shape)}; expected (N, 28, 28) images and N labels")
        return xtr, ytr, xte, yte

    def load(self, data_cfg, opts):
        xtr, ytr, xte, yte = self.arrays()
        train, val, _, labelled = S.train_val_test(ytr, data_cfg, test_fraction=None, pool=True)

        def pick(x, y, idx):
            if idx is None:
                return None
            return x[idx, None], y[idx]  # (N, 1, 28, 28) uint8

        return image_bundle({"train": pick(xtr, ytr, train), "val": pick(xtr, ytr, val),
                             "test": pick(xte, yte, np.arange(len(yte)))},
                            self.class_names, normalize=opts.normalize if opts else False, labelled=labelled)


DATASETS.register("mnist", IdxImages(
    "mnist", "mnist",
    ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
     "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
     "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    (9912422, 28881, 1648877, 4542),
    [str(i) for i in range(10)],
    "CC BY-SA 3.0 (copyright Yann LeCun and Corinna Cortes)",
    "Handwritten digits 0-9, 28x28 grayscale (LeCun, Cortes, Burges)",
))

DATASETS.register("fashion_mnist", IdxImages(
    "fashion_mnist", "fashion-mnist",
    ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
     "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
     "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
     "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    (26421880, 29515, 4422102, 5148),
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "MIT (copyright 2017 Zalando SE)",
    "Zalando clothing photos in 10 classes, 28x28 grayscale, a drop-in MNIST replacement",
))
