"""The language_model task on real text: a briefly trained char LSTM beats the unigram model by a
margin; `generate` handles empty, unseen-character and over-long prompts, and refuses bad options."""

import json
import math

import pytest
import torch

from strata.errors import StrataError

torch.set_num_threads(1)

CONFIG = {
    "name": "lm-test",
    "data": {"name": "shakespeare", "block_size": 64, "stride": 64, "batch_size": 32, "limit": 2000},
    "model": {"name": "rnn_lm", "hidden": 128, "layers": 1, "dropout": 0.0},
    "task": {"name": "language_model"},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "trainer": {"max_epochs": 1, "progress": "off", "device": "cpu", "seed": 0},
}


@pytest.fixture(scope="module")
def run(strata_home, tmp_path_factory):
    from strata.api import load_run, train
    from tests.conftest import mirror_location

    where = mirror_location()
    if where is None:
        pytest.skip("no data mirror: set STRATA_DATA_MIRROR")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(strata_home))
        result = train(CONFIG, run_dir=tmp_path_factory.mktemp("run") / "lm")
    return result, load_run(result.run_dir)


def test_lstm_beats_the_unigram_model(run):
    result, loaded = run
    unigram = loaded.info["unigram_val_loss"]  # ~3.35 nats/char on the val split
    val = result.summary["val/loss"]
    # 63 steps on 2,000 windows take the LSTM to ~2.3 nats/char: demand at least 0.7 below unigram
    assert val < unigram - 0.7, (val, unigram)
    assert result.summary["val/bpc"] == pytest.approx(val / math.log(2), rel=1e-6)  # char tokenizer
    assert result.summary["val/ppl"] == pytest.approx(math.exp(val), rel=1e-4)
    assert (result.run_dir / "tokenizer.json").is_file()


def gen(loaded, **request):
    return loaded.task.generate(request, loaded.run_dir)


def test_generate_is_seeded_and_continues_the_prompt(run):
    _, loaded = run
    a = gen(loaded, prompt="ROMEO:", max_new_tokens=40, seed=3)
    b = gen(loaded, prompt="ROMEO:", max_new_tokens=40, seed=3)
    assert a["text"] == b["text"] and a["text"].startswith("ROMEO:") and len(a["text"]) == 6 + 40
    c = gen(loaded, prompt="ROMEO:", max_new_tokens=40, seed=4, top_k=5, top_p=0.9, temperature=0.5, n=2)
    assert len(c["samples"]) == 2 and all(s.startswith("ROMEO:") for s in c["samples"])


def test_empty_prompt_starts_from_a_newline(run):
    _, loaded = run
    out = gen(loaded, prompt="", max_new_tokens=20, seed=0)
    assert len(out["text"]) == 20 and out["prompt"] == ""
    assert len(gen(loaded, max_new_tokens=5, seed=0)["text"]) == 5  # no --prompt at all


def test_unseen_characters_map_to_unknown_with_a_warning(run):
    _, loaded = run
    with pytest.warns(UserWarning, match="never seen in training"):
        out = gen(loaded, prompt="Ωmega ☃", max_new_tokens=5, seed=0)
    assert out["text"].startswith("Ωmega ☃")


def test_long_prompt_is_cropped_from_the_left(run):
    _, loaded = run
    prompt = "To be, or not to be, that is the question. " * 10  # 440 chars > block_size 64
    with pytest.warns(UserWarning, match="longer than the model's context of 64"):
        out = gen(loaded, prompt=prompt, max_new_tokens=5, seed=0)
    assert out["text"].startswith(prompt) and len(out["text"]) == len(prompt) + 5


@pytest.mark.parametrize("request_, match", [
    ({"max_new_tokens": 0}, "--max-new-tokens: must be > 0"),
    ({"max_new_tokens": -3}, "--max-new-tokens: must be > 0"),
    ({"temperature": 0}, "--temperature: must be > 0"),
    ({"temperature": -1.0}, "--temperature: must be > 0"),
    ({"top_p": 0}, r"--top-p: must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"--top-p: must be in \(0, 1\]"),
    ({"top_k": 0}, "--top-k: must be >= 1"),
    ({"max_new_tokens": 2.5}, "--max-new-tokens: expected an integer"),
    ({"steps": 10}, "--steps do not apply to a language model"),
])
def test_bad_generate_options_are_refused(run, request_, match):
    _, loaded = run
    with pytest.raises(StrataError, match=match):
        gen(loaded, prompt="A", **request_)


def test_bpe_bits_per_character_use_the_text_length(mirror):
    from strata.config import DataConfig
    from strata.data import load_data

    b = load_data(DataConfig(name="shakespeare", limit=10, options={"tokenizer": "bpe", "vocab_size": 512,
                                                                     "block_size": 32}))
    info = json.loads(json.dumps(b.info))  # JSON-able, as written to the run folder
    assert 1.5 < info["chars_per_token"] < 2.5
    assert info["vocab_size"] == 512 and info["context_size"] == 32
