"""Text data sets: a character / BPE corpus for language modelling and labelled sentences for
sentiment. Tokenisers are trained on the training split only and travel with the run
(bundle.artifacts["tokenizer.json"]).

- "shakespeare": tiny Shakespeare (Karpathy's char-rnn corpus, 1.1 M characters). As nanoGPT: the
  first 90 % of the characters train, the last 10 % validate. A training example is a window of
  block_size + 1 tokens (input = the first block_size, target = the last block_size); windows
  start every `stride` tokens (stride 1 = every offset, the distribution of nanoGPT's random
  windows), held as a strided view of the token stream so no copy is made on the CPU. Validation
  windows do not overlap. No test split.
- "sst2": the GLUE Stanford Sentiment Treebank, binary (Socher et al. 2013; Wang et al. 2018).
  GLUE hides the test labels, so the public dev set (872 sentences) is the reported held-out set
  and lives in `test`; the validation split used for model selection is carved from train
  (data.val_fraction, stratified, data.split_seed), so dev is never looked at while training.
"""

from __future__ import annotations

import re
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
from strata.data.tokenizers import ARTIFACT, PAD, load_tokenizer, train_tokenizer
from strata.errors import DataError


def token_dtype(vocab_size: int) -> torch.dtype:
    """The smallest signed integer type that holds every id (tasks cast to int64 on use)."""
    return torch.int16 if vocab_size <= 2**15 else torch.int32


def unigram_loss(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on eval_ids of a unigram model fitted to train_ids (add-one
    smoothing): the trivial baseline a language model must beat."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[eval_ids.long()].mean())


# ---------------------------------------------------------------------------------------------
# Tiny Shakespeare


@dataclass(frozen=True)
class CorpusConfig:
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 1024  # bpe only: merges + 256 bytes + 4 specials
    block_size: int = 256  # context length of a training window
    stride: int = 1  # a training window starts every `stride` tokens

    def __post_init__(self):
        check(self.block_size >= 1, "[data] block_size", f"must be >= 1, got {self.block_size}")
        check(self.stride >= 1, "[data] stride", f"must be >= 1, got {self.stride}")
        check(self.tokenizer == "char" or self.vocab_size >= 260, "[data] vocab_size",
              f"must be >= 260 for bpe (4 specials + 256 bytes), got {self.vocab_size}")


def windows(ids: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """(N, size) view of every `size` tokens starting each `step` tokens."""
    return ids.unfold(0, size, step)  # (N, size), no copy


class Shakespeare(DatasetSpec):
    Config = CorpusConfig
    files = (RemoteFile("tiny-shakespeare/input.txt",
                        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394),)
    license = "Public domain (Shakespeare); compilation by Andrej Karpathy for char-rnn"
    description = "Tiny Shakespeare, 1.1 M characters of plays, for character- or BPE-level language modelling"
    splits = "first 90 % train / last 10 % val (nanoGPT's split); no test"

    def load(self, data_cfg, opts: CorpusConfig) -> DataBundle:
        f = self.files[0]
        text = fetch(f.path, f.sha256, dataset="shakespeare").read_text(encoding="utf-8")
        n = int(len(text) * 0.9)
        train_text, val_text = text[:n], text[n:]
        tok = train_tokenizer(opts.tokenizer, train_text.splitlines(keepends=True), opts.vocab_size)
        dtype = token_dtype(tok.vocab_size)
        train_ids = torch.tensor(tok.encode(train_text, warn=False), dtype=dtype)
        val_ids = torch.tensor(tok.encode(val_text, warn=False), dtype=dtype)
        size = opts.block_size + 1
        if len(val_ids) < size:
            raise DataError(f"[data] block_size: the validation text has {len(val_ids)} tokens, fewer than "
                            f"block_size + 1 = {size}; use a smaller block_size")
        train = windows(train_ids, size, opts.stride)  # (N, block_size + 1)
        keep = S.training_subset(np.arange(len(train)), None, data_cfg)
        if len(keep) < len(train):  # no copy of the ~1 M windows when all are kept
            train = train[torch.from_numpy(keep)]
        val = windows(val_ids, size, opts.block_size)
        info = {
            "input": "text",
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "block_size": opts.block_size,
            "context_size": opts.block_size,  # the same fact under the transformer's name
            "pad_id": PAD,
            # bits per character = loss / ln 2 / chars_per_token (1 for the char tokenizer)
            "chars_per_token": len(val_text) / len(val_ids),
            "unigram_val_loss": unigram_loss(train_ids, val_ids, tok.vocab_size),
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
        }
        return DataBundle(train=TensorSplit({"tokens": train}), val=TensorSplit({"tokens": val}), test=None,
                          info=info, artifacts={ARTIFACT: tok.to_bytes()})

    def encode_inputs(self, inputs, info, run_dir):
        raise DataError("this run is a language model: continue a text with "
                        "`strata generate RUN_DIR --prompt TEXT` instead of `strata predict`")


DATASETS.register("shakespeare", Shakespeare())


# ---------------------------------------------------------------------------------------------
# SST-2


def sst_normalize(sentence: str) -> str:
    """User text -> the form of the SST-2 files (lower case, Penn-Treebank-like tokens separated by
    spaces: "Don't!" -> "do n't !"). Idempotent on the training sentences."""
    s = sentence.lower().replace("\u2019", "'")
    s = re.sub(r"([.,!?;:()\"])", r" \1 ", s)
    s = re.sub(r"n't\b", " n't", s)
    s = re.sub(r"(\w)('s|'re|'ve|'ll|'d|'m)\b", r"\1 \2", s)
    return " ".join(s.split())


def read_labelled_tsv(path: Path, name: str) -> tuple[list[str], np.ndarray]:
    """'sentence<TAB>label' lines after a header -> (sentences, labels int64)."""
    sentences, labels = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise DataError(f"{path}: expected a header 'sentence<TAB>label', got {lines[:1]!r}; is it the GLUE {name}?")
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("\t")
        if not sep or label.strip() not in ("0", "1"):
            raise DataError(f"{path}:{i}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
        sentences.append(sentence.strip())
        labels.append(int(label))
    return sentences, np.asarray(labels, dtype=np.int64)


def pad_batch(seqs: list[list[int]], max_len: int = 0) -> dict[str, torch.Tensor]:
    """Token lists -> {"tokens": (B, T) padded with 0, "lengths": (B,)}; cropped to max_len if > 0."""
    if max_len:
        seqs = [s[:max_len] for s in seqs]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.full((len(seqs), max(1, int(lengths.max(initial=1)))), PAD, dtype=np.int64)
    mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    tokens[mask] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    return {"tokens": torch.from_numpy(tokens), "lengths": torch.from_numpy(lengths)}


MEDIA = {".wav", ".flac", ".mp3", ".ogg", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
         ".npy", ".pt"}


def check_sentences(inputs: list[str]) -> None:
    """A text model takes sentences: refuse file paths (an image or a wav given by mistake)."""
    for s in inputs:
        p = Path(s)
        if p.suffix.lower() in MEDIA or (len(s) < 4096 and p.is_file()):
            raise DataError(f"{s!r} looks like a file; this is a text model; give a sentence, e.g. "
                            f"strata predict RUN_DIR \"a gripping, beautifully acted film\"")
        if not s.strip():
            raise DataError("an empty sentence was given; give a sentence with at least one word")


@dataclass(frozen=True)
class SentencesConfig:
    tokenizer: Literal["char", "bpe"] = "bpe"
    vocab_size: int = 8000  # bpe only
    max_len: int = 0  # crop longer sentences to this many tokens; 0 = no crop

    def __post_init__(self):
        check(self.tokenizer == "char" or self.vocab_size >= 260, "[data] vocab_size",
              f"must be >= 260 for bpe (4 specials + 256 bytes), got {self.vocab_size}")
        check(self.max_len >= 0, "[data] max_len", f"must be >= 0, got {self.max_len}")


class SST2(DatasetSpec):
    Config = SentencesConfig
    files = (
        RemoteFile("sst2/train.tsv", "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1", 3806081),
        RemoteFile("sst2/dev.tsv", "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0", 94931),
    )
    license = "No explicit license (research use); cite Socher et al. 2013 and Wang et al. 2018 (GLUE)"
    description = ("GLUE SST-2 binary sentiment (negative / positive) of movie-review phrases. GLUE test labels "
                   "are hidden, so the public dev set is the held-out set reported as `test`; model selection "
                   "uses a val split carved from train")
    splits = ("train 67,349 phrases (val carved from it with val_fraction) / test = GLUE dev, 872 sentences")
    class_names = ["negative", "positive"]

    def load(self, data_cfg, opts: SentencesConfig) -> DataBundle:
        paths = [fetch(f.path, f.sha256, dataset="sst2") for f in self.files]
        xtr, ytr = read_labelled_tsv(paths[0], "SST-2 train.tsv")
        xdev, ydev = read_labelled_tsv(paths[1], "SST-2 dev.tsv")
        # a leading space makes the first word the same byte-level BPE token as it is mid-sentence
        xtr, xdev = [" " + s for s in xtr], [" " + s for s in xdev]
        kept, held = S.hold_out(ytr, data_cfg.val_fraction, data_cfg.split_seed)
        train_idx = S.training_subset(kept, ytr, data_cfg)
        tok = train_tokenizer(opts.tokenizer, [xtr[i] for i in train_idx], opts.vocab_size)

        def split(sentences, y):
            if len(sentences) == 0:
                return None
            ids = (tok.encode_batch(sentences) if hasattr(tok, "encode_batch")
                   else [tok.encode(s, warn=False) for s in sentences])
            batch = pad_batch(ids, opts.max_len)
            return TensorSplit({**batch, "y": torch.from_numpy(y)})

        majority = int(np.bincount(ytr[train_idx]).argmax())
        info = {
            "input": "text",
            "normalize": "sst",
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "pad_id": PAD,
            "max_len": opts.max_len,
            "num_classes": 2,
            "class_names": self.class_names,
            "majority_class": majority,
            "majority_test_acc": float((ydev == majority).mean()),
        }
        return DataBundle(train=split([xtr[i] for i in train_idx], ytr[train_idx]),
                          val=split([xtr[i] for i in held], ytr[held]),
                          test=split(xdev, ydev), info=info, artifacts={ARTIFACT: tok.to_bytes()})

    def encode_inputs(self, inputs, info, run_dir):
        check_sentences(inputs)
        tok = load_tokenizer(run_dir)
        if info.get("normalize") == "sst":
            inputs = [sst_normalize(s) for s in inputs]
        return pad_batch([tok.encode(" " + s) for s in inputs], info.get("max_len", 0))


DATASETS.register("sst2", SST2())


__all__ = ["Shakespeare", "SST2", "sst_normalize", "pad_batch", "check_sentences", "unigram_loss", "windows",
           "token_dtype"]
