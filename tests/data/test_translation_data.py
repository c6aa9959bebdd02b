"""eng_fra: the held-out split is a function of the normalised English sentence only, so no English
sentence (up to case and punctuation) is in two splits; tokenizers are trained on train only."""

from __future__ import annotations

import pytest

from strata.config import DataConfig
from strata.data import load_data
from strata.data.translation import EngFra, clean, normalise_english, split_of
from strata.data.tokenizers import tokenizer_from_bytes


def test_normalisation_and_cleaning():
    assert normalise_english("I'm  COLD!") == normalise_english("i'm cold.") == "i m cold"
    assert clean("Va\u202f!\u200b  ") == "Va !"
    assert clean("l\u2019eau") == "l'eau"


def test_hash_split_has_no_english_overlap(mirror):
    pairs = EngFra().pairs()
    assert len(pairs) == 135842
    seen: dict[str, str] = {}
    counts = {"train": 0, "val": 0, "test": 0}
    for english, _ in pairs:
        s = split_of(english, 0.05, 0.1)
        key = normalise_english(english)
        assert seen.setdefault(key, s) == s, f"{english!r} falls in {seen[key]} and {s}"
        counts[s] += 1
    n = len(pairs)
    # the fractions hold up to the clumping of pairs that share an English sentence
    assert abs(counts["test"] / n - 0.05) < 0.01 and abs(counts["val"] / n - 0.1) < 0.015


def test_load_splits_are_disjoint_and_tokenizer_sees_train_only(mirror):
    bundle = load_data(DataConfig(name="eng_fra", val_fraction=0.1,
                                  options={"max_words": 3, "vocab_size": 400, "max_len": 12}))
    tok = tokenizer_from_bytes(bundle.info["src_tokenizer"].encode())

    def english(split):
        t = split.tensors
        return {normalise_english(tok.decode(r[:n])) for r, n in zip(t["src"].tolist(), t["src_lengths"].tolist())}

    train, val, test = english(bundle.train), english(bundle.val), english(bundle.test)
    assert len(train) > 1000 and len(val) > 100 and len(test) > 50
    assert not (train & val) and not (train & test) and not (val & test)
    t = bundle.train.tensors
    assert t["tgt"][:, 0].eq(1).all()  # bos
    assert t["tgt"].gather(1, t["tgt_lengths"][:, None] - 1).eq(2).all()  # eos at the end of every row
    assert int(t["src_lengths"].max()) <= 12 and bundle.info["context_size"] == 13
    # the same file gives the same held-out split whatever split_seed says
    other = load_data(DataConfig(name="eng_fra", val_fraction=0.1, split_seed=5,
                                 options={"max_words": 3, "vocab_size": 400, "max_len": 12}))
    assert len(other.test) == len(bundle.test)


def test_encode_inputs_errors(tmp_path):
    with pytest.raises(Exception, match="src_tokenizer|source tokenizer"):
        EngFra().encode_inputs(["I am cold."], {}, tmp_path)
