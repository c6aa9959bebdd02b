"""Tokenisers round-trip their training text exactly, keep the special ids, map unseen characters
to <unk> with a warning, and come back from the bytes saved in a run folder."""

import pytest

from strata.data.tokenizers import (BOS, EOS, PAD, UNK, load_tokenizer, tokenizer_from_bytes, train_tokenizer)
from strata.errors import DataError, StrataError


@pytest.fixture(scope="module")
def shakespeare_train(strata_home):
    from strata.data.download import fetch
    from strata.data.text import Shakespeare
    from tests.conftest import mirror_location

    where = mirror_location()
    if where is None:
        pytest.skip("no data mirror: set STRATA_DATA_MIRROR")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STRATA_DATA_MIRROR", where)
        mp.setenv("STRATA_HOME", str(strata_home))
        f = Shakespeare.files[0]
        text = fetch(f.path, f.sha256, quiet=True).read_text(encoding="utf-8")
    return text[: int(len(text) * 0.9)]


def test_char_round_trips_the_training_text(shakespeare_train):
    tok = train_tokenizer("char", [shakespeare_train])
    ids = tok.encode(shakespeare_train)
    assert tok.decode(ids) == shakespeare_train
    assert min(ids) >= 4 and UNK not in ids  # specials are never produced by text
    assert tok.vocab_size == 4 + len(set(shakespeare_train))


def test_bpe_round_trips_the_training_text_and_compresses(shakespeare_train):
    tok = train_tokenizer("bpe", shakespeare_train.splitlines(keepends=True), vocab_size=512)
    ids = tok.encode(shakespeare_train)
    assert tok.decode(ids) == shakespeare_train
    assert tok.vocab_size == 512
    assert len(ids) < 0.6 * len(shakespeare_train)  # merges shorten the text (about 1.9 chars/token)


def test_special_ids_are_fixed():
    for tok in (train_tokenizer("char", ["abc"]), train_tokenizer("bpe", ["abc abd"] * 10, vocab_size=270)):
        assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
        assert tok.decode([BOS, *tok.encode("ab"), EOS, PAD]) == "ab"


def test_unseen_characters_warn_and_map_to_unk():
    tok = train_tokenizer("char", ["hello world"])
    with pytest.warns(UserWarning, match=r"2 character\(s\) never seen in training \('!', 'é'\)"):
        ids = tok.encode("héllo!")
    assert ids[1] == UNK and ids[-1] == UNK
    assert tok.decode(ids) == "h\ufffdllo\ufffd"


def test_bpe_has_no_unknown_input():
    tok = train_tokenizer("bpe", ["plain ascii text"] * 5, vocab_size=300)
    text = "naïve 日本語 🙂 \t\n"
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_saved_bytes_load_from_a_run_folder(tmp_path, kind):
    tok = train_tokenizer(kind, ["to be or not to be\n"] * 20, vocab_size=280)
    (tmp_path / "tokenizer.json").write_bytes(tok.to_bytes())
    again = load_tokenizer(tmp_path)
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.encode("not to be") == tok.encode("not to be")


def test_missing_or_corrupt_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b"\x00\xff not json")
    with pytest.raises(DataError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="not a valid tokenizer file"):
        tokenizer_from_bytes(b'{"model": 3}')


def test_bad_kind_or_vocab_size():
    with pytest.raises(StrataError, match="tokenizer must be 'char' or 'bpe'"):
        train_tokenizer("word", ["a"])
    with pytest.raises(StrataError, match="vocab_size must be >= 260"):
        train_tokenizer("bpe", ["a"], vocab_size=100)
