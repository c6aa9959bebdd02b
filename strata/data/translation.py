"""English -> French sentence pairs from Tatoeba (tatoeba.org, CC BY 2.0 FR), the 135,842 pairs of
the PyTorch tutorial "NLP From Scratch: Translation with a Sequence to Sequence Network".

Splits: the file has none, so a fixed held-out split is drawn from a hash of the normalised
English sentence (lower case, letters and digits only): every pair sharing an English sentence
lands in the same split, so no English sentence is both trained on and evaluated, whatever the
options. SHA-256(normalised English) mapped to [0, 1) puts a pair in `test` below test_fraction,
in `val` below test_fraction + [data] val_fraction, else in `train`. [data] split_seed does not
move it. `max_words` and `max_len` then drop long pairs from every split; [data] limit keeps a
seeded subset of the training pairs.

Tokens: byte-level BPE (or characters) trained on the training split only, one vocabulary shared
by both languages or one per language. Source = English ids; target = bos + French ids + eos.
The tokenizers travel in `info` (the task detokenises for BLEU and predict without the run
folder) and as tokenizer files in the run folder.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from strata.config import check
from strata.data import DATASETS
from strata.data import splits as S
from strata.data.base import DataBundle, DatasetSpec, TensorSplit
from strata.data.download import RemoteFile, fetch
from strata.data.tokenizers import BOS, EOS, PAD, tokenizer_from_bytes, train_tokenizer
from strata.errors import DataError

FILE = RemoteFile("tatoeba-eng-fra/eng-fra.txt.gz",
                  "288fd5b7fc1431692c9f91c404f6fd0e2ce9b341e6380ac7cb8919ee70ac2744", 2809605)

# Typographic spaces of French punctuation ("Va !" has U+00A0 or U+202F) become plain spaces;
# invisible characters go.
_SPACES = re.compile(r"[\u00a0\u2009\u202f\u3000]")
_INVISIBLE = re.compile(r"[\u200b\u00ad]")


def clean(text: str) -> str:
    """NFC, plain spaces, straight apostrophes, single spaces."""
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", _SPACES.sub(" ", text)).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def normalise_english(text: str) -> str:
    """The key of the held-out split: lower case, letters and digits only, single spaces, so that
    "I'm cold." and "i'm cold!" fall on the same side."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def split_of(english: str, test_fraction: float, val_fraction: float) -> str:
    """'train' | 'val' | 'test' from the SHA-256 of the normalised sentence."""
    digest = hashlib.sha256(normalise_english(english).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise DataError(f"{path} line {n}: expected 'English<TAB>French', got {line[:80]!r}; "
                                "the file is not the Tatoeba eng-fra file (re-fetch it)")
            pairs.append((clean(parts[0]), clean(parts[1])))
    return pairs


@dataclass(frozen=True)
class TranslationConfig:
    max_len: int = 64  # longest sentence in tokens (without bos/eos); longer pairs are dropped
    max_words: int = 0  # keep pairs whose two sides have at most this many words; 0 keeps all
    tokenizer: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 8000  # bpe: per vocabulary
    shared_vocab: bool = True  # one vocabulary for English and French
    test_fraction: float = 0.05  # the fixed held-out test split (by English-sentence hash)

    def __post_init__(self):
        check(self.max_len >= 2, "[data] max_len", f"must be >= 2, got {self.max_len}")
        check(self.max_words >= 0, "[data] max_words", f"must be >= 0, got {self.max_words}")
        check(0 < self.test_fraction < 0.5, "[data] test_fraction", f"must be in (0, 0.5), got {self.test_fraction}")


def _pad(rows: list[list[int]], width: int) -> torch.Tensor:
    """Rows of ids -> (N, width) int32, right-padded with PAD."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    out = np.full((len(rows), max(width, 1)), PAD, dtype=np.int32)
    out[np.arange(out.shape[1])[None, :] < lengths[:, None]] = flat  # row-major order matches `flat`
    return torch.from_numpy(out)


def encode_pairs(pairs, src_tok, tgt_tok) -> dict[str, torch.Tensor]:
    """Pairs -> {"src": (N, S) int32 English ids, "src_lengths", "tgt": (N, T) bos + French + eos,
    "tgt_lengths"}, right-padded with pad = 0 to the longest row."""
    src = _encode_all(src_tok, [e for e, _ in pairs])
    tgt = [[BOS] + ids + [EOS] for ids in _encode_all(tgt_tok, [f for _, f in pairs])]
    return {
        "src": _pad(src, max((len(r) for r in src), default=1)),
        "src_lengths": torch.tensor([len(r) for r in src], dtype=torch.long),
        "tgt": _pad(tgt, max((len(r) for r in tgt), default=2)),
        "tgt_lengths": torch.tensor([len(r) for r in tgt], dtype=torch.long),
    }


def _encode_all(tok, texts: list[str]) -> list[list[int]]:
    if hasattr(tok, "encode_batch"):
        return tok.encode_batch(texts)
    return [tok.encode(t, warn=False) for t in texts]


class EngFra(DatasetSpec):
    Config = TranslationConfig
    files = (FILE,)
    license = "CC BY 2.0 FR (Tatoeba contributors, tatoeba.org); pairs compiled by manythings.org/anki"
    description = "Tatoeba English-French sentence pairs (135,842), for translation"
    splits = "fixed by a hash of the English sentence: test 5 % (test_fraction), val [data] val_fraction, rest train"

    def pairs(self) -> list[tuple[str, str]]:
        return read_pairs(fetch(FILE.path, FILE.sha256, dataset="eng_fra"))

    def load(self, data_cfg, opts: TranslationConfig | None) -> DataBundle:
        opts = opts or TranslationConfig()
        pairs = self.pairs()
        if opts.max_words:
            pairs = [p for p in pairs if len(p[0].split()) <= opts.max_words and len(p[1].split()) <= opts.max_words]
        which = [split_of(e, opts.test_fraction, data_cfg.val_fraction) for e, _ in pairs]
        by_split = {s: [p for p, w in zip(pairs, which) if w == s] for s in ("train", "val", "test")}
        train = by_split["train"]
        keep = S.training_subset(np.arange(len(train)), None, data_cfg)
        train = [train[i] for i in keep]
        if not train:
            raise DataError("data set 'eng_fra': no training pairs left after max_words / limit; raise them")

        # Tokenizers see the training split only.
        if opts.shared_vocab:
            src_tok = tgt_tok = train_tokenizer(opts.tokenizer, [t for p in train for t in p], opts.vocab_size)
        else:
            src_tok = train_tokenizer(opts.tokenizer, [e for e, _ in train], opts.vocab_size)
            tgt_tok = train_tokenizer(opts.tokenizer, [f for _, f in train], opts.vocab_size)

        def tensors(split_pairs):
            if not split_pairs:
                return None
            t = encode_pairs(split_pairs, src_tok, tgt_tok)
            ok = (t["src_lengths"] <= opts.max_len) & (t["tgt_lengths"] <= opts.max_len + 2)
            ok &= t["src_lengths"] > 0
            t = {k: v[ok] for k, v in t.items()}
            t["src"] = t["src"][:, : int(t["src_lengths"].max())]
            t["tgt"] = t["tgt"][:, : int(t["tgt_lengths"].max())]
            return TensorSplit(t)

        src_json = src_tok.to_bytes().decode("utf-8")
        tgt_json = tgt_tok.to_bytes().decode("utf-8")
        info = {
            "src_vocab_size": src_tok.vocab_size, "tgt_vocab_size": tgt_tok.vocab_size,
            "pad_id": PAD, "bos_id": BOS, "eos_id": EOS,
            "context_size": opts.max_len + 1,  # bos + max_len French tokens enter the decoder
            "max_len": opts.max_len, "shared_vocab": opts.shared_vocab,
            "source_language": "en", "target_language": "fr",
            "src_tokenizer": src_json, "tgt_tokenizer": tgt_json,
        }
        artifacts = ({"tokenizer.json": src_json.encode("utf-8")} if opts.shared_vocab else
                     {"tokenizer_src.json": src_json.encode("utf-8"), "tokenizer_tgt.json": tgt_json.encode("utf-8")})
        return DataBundle(train=tensors(train), val=tensors(by_split["val"]), test=tensors(by_split["test"]),
                          info=info, artifacts=artifacts)

    def encode_inputs(self, inputs: list[str], info: dict, run_dir: Path) -> dict[str, torch.Tensor]:
        """English sentences -> {"src", "src_lengths"} for `strata predict`."""
        if "src_tokenizer" not in info:
            raise DataError(f"run folder {run_dir}: info.json has no source tokenizer; this run was not trained on "
                            "eng_fra (or info.json was edited); retrain it")
        tok = tokenizer_from_bytes(info["src_tokenizer"].encode("utf-8"), f"{run_dir}/info.json src_tokenizer")
        max_len = int(info.get("max_len", 64))
        rows = []
        for text in inputs:
            if Path(text).suffix.lower() in {".wav", ".png", ".jpg", ".jpeg", ".npy"} and Path(text).exists():
                raise DataError(f"{text!r} is a file; this run translates English sentences: "
                                f"strata predict {run_dir} \"I am cold.\"")
            text = clean(text)
            if not text:
                raise DataError("an empty sentence cannot be translated; give an English sentence, e.g. \"I am cold.\"")
            ids = tok.encode(text)
            if len(ids) > max_len:
                warnings.warn(f"sentence of {len(ids)} tokens cut to the {max_len} the model was trained on: "
                              f"{text[:40]!r}...", stacklevel=2)
                ids = ids[:max_len]
            rows.append(ids)
        return {"src": _pad(rows, max(len(r) for r in rows)).long(),
                "src_lengths": torch.tensor([len(r) for r in rows], dtype=torch.long)}


DATASETS.register("eng_fra", EngFra())
