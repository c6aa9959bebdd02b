"""Data bigger than memory: image folders and CSV tables streamed from disk give the batches of the
in-memory path, tensor for tensor and in the same order, through 0 or 2 DataLoader workers; a run on a
streamed folder killed mid-epoch resumes bit-identically."""

from __future__ import annotations

import gzip
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from strata.config import DataConfig
from strata.data import load_data, streaming
from strata.data.streaming import CsvRows, ImageFiles
from strata.errors import ConfigError, DataError
from strata.train.loader import EpochBatches

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """900 of scikit-learn's 8x8 digits as image files, one sub-folder per class: PNG and JPEG, and
    one in five saved at 16x16, so reading converts and resizes."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images[:900], d.target[:900])):
        (root / str(label)).mkdir(exist_ok=True)
        im = Image.fromarray((img * 16).clip(0, 255).astype(np.uint8))
        if i % 5 == 0:
            im = im.resize((16, 16), Image.Resampling.NEAREST)
        im.save(root / str(label) / f"{i}.{'jpg' if i % 7 == 0 else 'png'}")
    return root


def folder(root, **options):
    return load_data(DataConfig(name="image_folder", val_fraction=0.1, options={
        "root": str(root), "image_size": 8, "channels": 1, "normalize": True, **options}))


def assert_same_batches(memory, streamed, collate=None, epochs=(0, 3), start=2):
    """Every batch of two epochs (one from batch `start` on, as a resumed run) is equal, key for key."""
    n = 0
    for shuffle in (True, False):
        a = EpochBatches(memory, 32, shuffle, 5, CPU)
        b = EpochBatches(streamed, 32, shuffle, 5, CPU, collate=collate)
        assert len(a) == len(b)
        for e in epochs:
            s = min(start, len(a) - 1) if e else 0
            pairs = list(zip(a.epoch(e, s), b.epoch(e, s), strict=True))
            assert len(pairs) == len(a) - s
            for (i, x), (j, y) in pairs:
                assert i == j and x.keys() == y.keys()
                for k in x:
                    assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (e, i, k)
                n += 1
    return n


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_folder_gives_the_in_memory_batches(digit_folder, num_workers):
    memory = folder(digit_folder, stream=False)
    streamed = folder(digit_folder, stream=True, num_workers=num_workers)
    assert memory.info == streamed.info  # fewer training images than the sample: the same statistics
    assert streamed.info["normalize"] is not None and streamed.info["background"] == "dark"
    for split in ("train", "val", "test"):
        data = getattr(streamed, split)
        assert isinstance(data, ImageFiles) and data.num_workers == num_workers
        assert assert_same_batches(getattr(memory, split), data) > 0


def test_streamed_batches_leave_the_global_random_state_alone(digit_folder):
    """The DataLoader seeds its workers from its own generator: a resumed run's dropout masks and
    augmentations draw the numbers the uninterrupted run drew (regression: one draw per epoch)."""
    batches = EpochBatches(folder(digit_folder, stream=True, num_workers=1).train, 64, True, 0, CPU)
    state = torch.get_rng_state()
    for e in range(2):
        assert len(list(batches.epoch(e, 3))) == len(batches) - 3
    assert torch.equal(torch.get_rng_state(), state)


def test_folder_statistics_of_a_sample_are_close_to_the_full_ones(digit_folder, monkeypatch, capsys):
    memory = folder(digit_folder, stream=False)
    monkeypatch.setattr(streaming, "SAMPLE", 200)
    streamed = folder(digit_folder, stream=True)
    assert "resized" in capsys.readouterr().err
    mean, std = memory.info["normalize"]["mean"][0], memory.info["normalize"]["std"][0]
    assert abs(streamed.info["normalize"]["mean"][0] - mean) < 0.05 * std
    assert streamed.info["normalize"]["mean"] != memory.info["normalize"]["mean"]  # a sample, not all of them
    assert {k: v for k, v in streamed.info.items() if k != "normalize"} == \
        {k: v for k, v in memory.info.items() if k != "normalize"}


def test_auto_streams_only_what_would_not_fit(digit_folder, monkeypatch, capsys):
    monkeypatch.setattr(streaming, "available_memory", lambda: 10**9)
    assert not isinstance(folder(digit_folder).train, ImageFiles)  # "auto" is the default
    monkeypatch.setattr(streaming, "available_memory", lambda: 100_000)  # 900 images x 256 bytes > half of it
    assert isinstance(folder(digit_folder).train, ImageFiles)
    assert "[data] stream = false holds it in memory" in capsys.readouterr().err


@pytest.fixture
def awkward_table(tmp_path):
    """300 rows in CRLF lines after a byte-order mark: quoted fields with delimiters, quotes and line
    breaks, a blank line, missing values, and a row without a target."""
    rng = np.random.default_rng(0)
    lines = ["\ufeffid,age,income,job,note,label"]
    for i in range(300):
        age = int(rng.integers(18, 70))
        label = "NA" if i == 9 else "high" if age > 50 else "low"
        note = '"line one\nline ""two"""' if i % 7 == 0 else "plain"
        job = "NA" if i == 7 else ["admin", "tech", "retired", "a,b"][i % 4]
        lines.append(f"{i},{'' if i == 5 else age},{rng.normal(5e4, 1e4):.3f},\"{job}\",{note},{label}")
        if i == 50:
            lines.append(",,,,,")
    path = tmp_path / "people.csv"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    return path


def table(path, **options):
    return load_data(DataConfig(name="csv", val_fraction=0.1, options={"path": str(path), "target": "label",
                                                                       "drop": ["id"], **options}))


@pytest.mark.parametrize("options", [{}, {"encoding": "index", "num_workers": 2}, {"target": "income"},
                                     {"target": "income", "categorical": ["job", "note", "label"]}],
                         ids=["onehot", "index-2-workers", "regression", "given-categorical"])
def test_streamed_csv_gives_the_in_memory_encoding(awkward_table, options):
    memory = table(awkward_table, stream=False, **options)
    streamed = table(awkward_table, stream=True, **options)
    assert memory.info == streamed.info  # fewer training rows than a chunk: the same statistics, bit for bit
    assert 'note=line one\nline "two"' in streamed.info["feature_names"] or options.get("encoding") == "index"
    for split in ("train", "val", "test"):
        assert isinstance(getattr(streamed, split), CsvRows)
        assert assert_same_batches(getattr(memory, split), getattr(streamed, split), streamed.collate) > 0


def test_csv_statistics_merged_over_chunks_agree_to_rounding(awkward_table, monkeypatch):
    memory = table(awkward_table, stream=False)
    monkeypatch.setattr(streaming, "CHUNK", 16)
    streamed = table(awkward_table, stream=True)
    for a, b in zip(memory.info["numeric"], streamed.info["numeric"], strict=True):
        assert a["name"] == b["name"] and a["mean"] == pytest.approx(b["mean"], rel=1e-12)
        assert a["std"] == pytest.approx(b["std"], rel=1e-12)
    assert memory.info["categorical"] == streamed.info["categorical"]
    x = EpochBatches(streamed.train, 1000, False, 0, CPU, collate=streamed.collate)
    _, batch = next(x.epoch(0))
    torch.testing.assert_close(batch["x"], memory.train.tensors["x"])


@pytest.mark.parametrize("text, options", [
    ("a,label\n1,x\ninf,y\n2,x\n", {}),
    ("a,label\n1,x\n2\n", {}),
    ("a,label\n1,x\n2,y\n", {"drop": ["b"]}),
    ("a,label\nred,x\n2,y\n3,x\n", {"categorical": []}),
    ("a,label\n", {}),
], ids=["infinite", "short-row", "no-column", "text-not-categorical", "no-rows"])
def test_streamed_csv_refuses_what_the_in_memory_path_refuses_with_the_same_words(tmp_path, text, options):
    path = tmp_path / "t.csv"
    path.write_text(text)
    errors = []
    for stream in (False, True):
        with pytest.raises(DataError) as e:
            table(path, stream=stream, **{"drop": [], **options})
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_gzip_tables_stream_only_once_decompressed(awkward_table):
    gz = awkward_table.with_suffix(".csv.gz")
    gz.write_bytes(gzip.compress(awkward_table.read_bytes()))
    assert len(table(gz, stream=False).train) > 0
    with pytest.raises(DataError, match=r"gzip-compressed.*gunzip people\.csv\.gz.*stream = false"):
        table(gz, stream=True)


@pytest.mark.parametrize("options, message", [
    ({"num_workers": -1}, r"^\[data\] num_workers: must be >= 0 \(0 reads in the training process.*got -1$"),
    ({"stream": "yes"}, r"^\[data\] stream: must be true, false or \"auto\" .*got 'yes'$"),
    ({"stream": 1}, r"^\[data\] stream: expected bool \| str, got 1$"),
    ({"num_workers": 1.5}, r"^\[data\] num_workers: expected an integer, got 1\.5$"),
])
def test_bad_stream_options_are_one_line_naming_the_key(digit_folder, awkward_table, options, message):
    for load in (lambda: folder(digit_folder, **options), lambda: table(awkward_table, **options)):
        with pytest.raises(ConfigError, match=message) as e:
            load()
        assert "\n" not in str(e.value)


def test_unlabelled_examples_need_the_in_memory_path(digit_folder):
    with pytest.raises(ConfigError, match=r"\[data\] unlabelled: .*set \[data\] stream = false"):
        load_data(DataConfig(name="image_folder", labels_per_class=5, unlabelled=True, val_fraction=0.1,
                             options={"root": str(digit_folder), "image_size": 8, "channels": 1, "stream": True}))


RESUME_CONFIG = """
name = "stream-resume"
[data]
name = "image_folder"
root = "{root}"
image_size = 8
channels = 1
normalize = true
stream = {stream}
num_workers = {workers}
batch_size = 32
[model]
name = "mlp"
hidden = [32]
dropout = 0.2
[task]
name = "classify"
[trainer]
max_epochs = 3
seed = 3
checkpoint_every_n_steps = 5
deterministic = true
progress = "off"
"""


def test_a_streamed_run_killed_mid_epoch_resumes_bit_identically(digit_folder, tmp_path):
    """Two persistent workers; the uninterrupted streamed run also ends with the weights of the same
    run held in memory."""
    from train.test_resume import _cmd, _env, _sha, check_sigkill_then_resume_is_bit_identical

    cfg = tmp_path / "stream.toml"
    cfg.write_text(RESUME_CONFIG.format(root=digit_folder, stream="true", workers=2))
    train = folder(digit_folder, stream=True).train
    steps = len(EpochBatches(train, 32, True, 3, CPU))
    assert steps >= 15
    check_sigkill_then_resume_is_bit_identical(cfg, tmp_path, steps_per_epoch=steps)

    memory = tmp_path / "memory.toml"
    memory.write_text(RESUME_CONFIG.format(root=digit_folder, stream="false", workers=0))
    subprocess.run(_cmd(memory, tmp_path / "memory"), check=True, env=_env(), capture_output=True, timeout=300)
    assert _sha(tmp_path / "memory") == _sha(tmp_path / "ref")
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["epochs"] == 3
