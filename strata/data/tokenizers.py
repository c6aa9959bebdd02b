"""Tokenisers: text <-> token ids, trained on a training split only and saved as bytes into the run
folder (`tokenizer.json`), so `predict` and `generate` need nothing but the run folder.

- "char": one id per character seen in training (char-rnn, nanoGPT's shakespeare_char). A
  character never seen in training maps to <unk>, with a warning.
- "bpe": byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with
  Subword Units"; the byte-level variant of GPT-2, Radford et al. 2019) trained with Hugging Face
  `tokenizers`. Every byte is in the base alphabet, so there is no unknown input and decoding
  returns the exact text.

Both reserve the same special ids: pad = 0, bos = 1, eos = 2, unk = 3. The char tokenizer has no
special strings (its specials can never come from text); the BPE tokenizer's are "<|pad|>",
"<|bos|>", "<|eos|>", "<|unk|>", which are matched as specials if they appear in the text.

    tok = train_tokenizer("bpe", [text], vocab_size=2048)
    bundle.artifacts["tokenizer.json"] = tok.to_bytes()
    ...
    tok = load_tokenizer(run_dir)
    ids = tok.encode("To be, or not to be")
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable

from strata.errors import DataError, StrataError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
N_SPECIAL = 4
BPE_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"]  # ids 0..3, in this order
ARTIFACT = "tokenizer.json"


def _show(chars) -> str:
    shown = ", ".join(repr(c) for c in sorted(chars)[:10])
    return shown + (", ..." if len(chars) > 10 else "")


class CharTokenizer:
    """One id per character of the training text, after the four special ids."""

    kind = "char"
    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i + N_SPECIAL for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + len(self.chars)

    def encode(self, text: str, warn: bool = True) -> list[int]:
        ids = [self.stoi.get(c, UNK) for c in text]
        if warn and UNK in ids:
            unseen = {c for c in text if c not in self.stoi}
            warnings.warn(f"{len(unseen)} character(s) never seen in training ({_show(unseen)}) were mapped "
                          f"to the unknown token", stacklevel=2)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Specials are dropped, except <unk> which shows as U+FFFD."""
        out = []
        for i in ids:
            i = int(i)
            if i >= N_SPECIAL and i - N_SPECIAL < len(self.chars):
                out.append(self.chars[i - N_SPECIAL])
            elif i == UNK:
                out.append("\ufffd")
        return "".join(out)

    def to_bytes(self) -> bytes:
        return json.dumps({"strata_tokenizer": "char", "version": 1, "chars": self.chars},
                          ensure_ascii=False).encode("utf-8")


class BPETokenizer:
    """Byte-level BPE through Hugging Face `tokenizers`; lossless on any text."""

    kind = "bpe"
    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, tok):
        self.tok = tok  # tokenizers.Tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < N_SPECIAL + 256:
            raise StrataError(f"bpe vocab_size must be >= {N_SPECIAL + 256} (4 specials + 256 bytes), "
                              f"got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, warn: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_bytes(self) -> bytes:
        return self.tok.to_str().encode("utf-8")


Tokenizer = CharTokenizer | BPETokenizer


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 0) -> Tokenizer:
    """A tokeniser of `kind` ("char" | "bpe") trained on `texts` (the training split only)."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise StrataError(f"tokenizer must be 'char' or 'bpe', got {kind!r}")


def tokenizer_from_bytes(data: bytes, where: str = "tokenizer") -> Tokenizer:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where} is not a valid tokenizer file ({e}); retrain the run or restore the file") from None
    if isinstance(obj, dict) and obj.get("strata_tokenizer") == "char":
        return CharTokenizer(obj["chars"])
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return BPETokenizer(HFTokenizer.from_str(data.decode("utf-8")))
    except Exception as e:  # the Rust side raises its own Exception type
        raise DataError(f"{where} is not a valid tokenizer file ({e}); retrain the run or restore the file") from None


def load_tokenizer(run_dir, name: str = ARTIFACT) -> Tokenizer:
    """The tokeniser saved in a run folder."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise DataError(f"run folder {run_dir} has no {name}; it was trained on data without a tokenizer, or the "
                        f"file was removed (retrain the run to recreate it)")
    return tokenizer_from_bytes(path.read_bytes(), str(path))


__all__ = ["CharTokenizer", "BPETokenizer", "Tokenizer", "train_tokenizer", "tokenizer_from_bytes",
           "load_tokenizer", "PAD", "BOS", "EOS", "UNK", "ARTIFACT"]
