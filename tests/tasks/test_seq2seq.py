"""The seq2seq task on a small real subset of Tatoeba eng-fra: a short training beats the unigram
baseline by a stated margin, and predict / generate / evaluate work from the run folder alone."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from conftest import NO_MIRROR, mirror_location
from strata.data.tokenizers import PAD
from strata.errors import DataError, StrataError

CONFIG = {
    "name": "seq2seq-test",
    "data": {"name": "eng_fra", "max_words": 4, "limit": 6000, "vocab_size": 600, "max_len": 16,
             "batch_size": 64, "val_fraction": 0.05},
    "model": {"name": "transformer_seq2seq", "n_layer": 2, "n_head": 4, "dim": 64, "dropout": 0.0,
              "share_embeddings": True},
    "task": {"name": "seq2seq", "bleu_pairs": 100, "beam_size": 3, "label_smoothing": 0.1},
    "optimizer": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.98]},
    "schedule": {"name": "cosine", "warmup_steps": 30},
    "trainer": {"max_epochs": 3, "progress": "off", "seed": 0},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    where = mirror_location()
    if where is None:
        pytest.skip(f"{NO_MIRROR}: set STRATA_DATA_MIRROR")
    from strata.api import train

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(tmp_path_factory.mktemp("home")))
        result = train(CONFIG, run_dir=tmp_path_factory.mktemp("run") / "s2s")
        yield result, where, mp


def unigram_loss(train_tgt: torch.Tensor, val_tgt: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy on val targets of the training targets' token frequencies
    (add-one smoothed): the best a model that ignores the source and the prefix can do."""
    counts = Counter(t for t in train_tgt[:, 1:].flatten().tolist() if t != PAD)
    total = sum(counts.values())
    vocab = int(max(train_tgt.max(), val_tgt.max())) + 1
    val = [t for t in val_tgt[:, 1:].flatten().tolist() if t != PAD]
    nll = -sum(math.log((counts.get(t, 0) + 1) / (total + vocab)) for t in val) / len(val)
    top = counts.most_common(1)[0][0]
    return nll, sum(t == top for t in val) / len(val)


def test_short_training_beats_unigram_baseline(run):
    result, _, _ = run
    from strata.data import load_data
    from strata.build import build_config

    bundle = load_data(build_config(json.loads(json.dumps(CONFIG))).data)
    base_loss, base_acc = unigram_loss(bundle.train.tensors["tgt"], bundle.val.tensors["tgt"])
    s = result.summary
    # Stated margins: at least 1 nat per token under the unigram model, and 15 points more of the
    # next tokens right than always guessing the most frequent one.
    assert s["val/loss"] < base_loss - 1.0, (s["val/loss"], base_loss)
    assert s["val/token_acc"] > base_acc + 0.15, (s["val/token_acc"], base_acc)
    assert "val/bleu" in s and s["val/bleu"] >= 0


def test_predict_generate_and_evaluate_from_run_folder(run):
    result, _, _ = run
    from strata.evaluate import evaluate_run, generate_run, predict_run

    out = predict_run(result.run_dir, ["I am cold.", "Tom is here."], device="cpu")
    assert len(out) == 2 and all(isinstance(o["translation"], str) and o["translation"] for o in out)
    gen = generate_run(result.run_dir, {"prompt": "I am cold.", "temperature": 0.7, "top_k": 20, "seed": 1, "n": 2},
                       device="cpu")
    assert len(gen["samples"]) == 2
    beam = generate_run(result.run_dir, {"prompt": "I am cold."}, device="cpu")
    assert beam["text"] == out[0]["translation"]  # both beam search with the task's beam size
    for bad, match in [({"prompt": "Hi.", "temperature": 0}, "--temperature"),
                       ({"prompt": "Hi.", "top_p": 1.5}, "--top-p"),
                       ({"prompt": "Hi.", "max_new_tokens": 0}, "--max-new-tokens"),
                       ({"prompt": ""}, "--prompt")]:
        with pytest.raises(StrataError, match=match):
            generate_run(result.run_dir, bad, device="cpu")
    with pytest.raises(DataError, match="empty sentence"):
        predict_run(result.run_dir, ["   "], device="cpu")
    report = evaluate_run(result.run_dir, split="test", device="cpu")
    assert 0 <= report["test/bleu_full"] <= 100 and report["test/bleu_full_pairs"] > 100


def test_beam_of_one_equals_greedy_on_the_trained_model(run):
    result, _, _ = run
    task = result.task.eval()
    src = ["I am cold.", "He is tall.", "We won.", "Go away!", "I'm sorry."]
    greedy = task.translate(src, decode="greedy")
    object.__setattr__(task.cfg, "beam_size", 1)
    try:
        assert task.translate(src, decode="beam") == greedy
    finally:
        object.__setattr__(task.cfg, "beam_size", 3)
