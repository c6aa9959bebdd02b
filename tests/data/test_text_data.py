"""Text data sets: nanoGPT's 90/10 split of tiny Shakespeare as windows (views, no copy), the
tokenizer trained on train only; SST-2 with dev kept as the untouched `test` and val carved from
train; sentences normalised like the corpus; padding and lengths."""

import pytest
import torch

from strata.config import ConfigError, DataConfig
from strata.data import load_data
from strata.data.text import pad_batch, sst_normalize
from strata.data.tokenizers import tokenizer_from_bytes
from strata.errors import DataError


def test_shakespeare_split_windows_and_limit(mirror):
    b = load_data(DataConfig(name="shakespeare", options={"block_size": 32, "stride": 1}))
    info, train, val = b.info, b.train.tensors["tokens"], b.val.tensors["tokens"]
    assert info["train_tokens"] + info["val_tokens"] == 1115394  # char tokenizer: one token per character
    assert info["train_tokens"] == int(1115394 * 0.9)
    assert train.shape == (info["train_tokens"] - 32, 33) and train.dtype == torch.int16
    assert train.untyped_storage().nbytes() == 2 * info["train_tokens"]  # a strided view, not 1 M copies
    assert torch.equal(train[1, :-1], train[0, 1:])  # stride 1: consecutive windows overlap
    assert val.shape == ((info["val_tokens"] - 33) // 32 + 1, 33)  # non-overlapping val windows
    assert torch.equal(val[1, 0], val[0, 32])  # each val window's last token starts the next one
    tok = tokenizer_from_bytes(b.artifacts["tokenizer.json"])
    assert tok.decode(train[0].tolist()) == "First Citizen:\nBefore we proceed any further"[:33]
    assert b.test is None and 3.0 < info["unigram_val_loss"] < 3.6

    small = load_data(DataConfig(name="shakespeare", limit=100, split_seed=3, options={"block_size": 32}))
    assert len(small.train) == 100
    starts = small.train.tensors["tokens"]
    assert not torch.equal(starts[0], starts[1])  # spread over the text, not the first 100 offsets only


def test_shakespeare_config_errors():
    from strata.build import build_config

    base = {"model": {"name": "rnn_lm"}, "task": {"name": "language_model"}}
    with pytest.raises(ConfigError, match=r"\[data\] block_size: must be >= 1"):
        build_config({**base, "data": {"name": "shakespeare", "block_size": 0}})
    with pytest.raises(ConfigError, match=r"\[data\] vocab_size: must be >= 260 for bpe"):
        build_config({**base, "data": {"name": "shakespeare", "tokenizer": "bpe", "vocab_size": 100}})
    with pytest.raises(ConfigError, match="tokenizer"):
        build_config({**base, "data": {"name": "shakespeare", "tokenizer": "word"}})


def test_sst2_dev_is_test_and_val_comes_from_train(mirror):
    b = load_data(DataConfig(name="sst2", val_fraction=0.1, split_seed=0, options={"vocab_size": 1000}))
    assert len(b.test) == 872  # the GLUE dev set, untouched
    assert len(b.train) + len(b.val) == 67349 and len(b.val) == round(0.1 * 67349)
    assert b.test.tensors["y"].float().mean() == pytest.approx(444 / 872)
    for split in (b.train, b.val, b.test):
        t, n = split.tensors["tokens"], split.tensors["lengths"]
        assert torch.all(n >= 1)
        pad = torch.arange(t.shape[1])[None, :] >= n[:, None]
        assert torch.all(t[pad] == 0) and torch.all(t[~pad] != 0)
    assert b.info["class_names"] == ["negative", "positive"] and b.info["majority_class"] == 1


def test_sst_normalize_matches_the_corpus_form():
    assert sst_normalize("It's a GRIPPING film, isn't it?") == "it 's a gripping film , is n't it ?"
    assert sst_normalize("Don't   bother!") == "do n't bother !"
    corpus = "the acting , costumes , music , cinematography and sound are all astounding ."
    assert sst_normalize(corpus) == corpus  # idempotent on training sentences


def test_pad_batch():
    b = pad_batch([[5, 6, 7], [8], [9, 10, 11, 12, 13]], max_len=4)
    assert b["tokens"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 11, 12]]
    assert b["lengths"].tolist() == [3, 1, 4]


def test_text_predict_inputs_are_checked(tmp_path):
    from strata.data import DATASETS

    with pytest.raises(DataError, match="this is a text model; give a sentence"):
        DATASETS.get("sst2").encode_inputs(["clip.wav"], {}, tmp_path)
    (tmp_path / "review.txt").write_text("great")
    with pytest.raises(DataError, match="looks like a file"):
        DATASETS.get("sst2").encode_inputs([str(tmp_path / "review.txt")], {}, tmp_path)
    with pytest.raises(DataError, match="empty sentence"):
        DATASETS.get("sst2").encode_inputs(["   "], {}, tmp_path)
    with pytest.raises(DataError, match="strata generate"):
        DATASETS.get("shakespeare").encode_inputs(["to be"], {}, tmp_path)
