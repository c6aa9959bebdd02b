"""Sequence-to-sequence (translation): teacher forcing with label-smoothed cross-entropy (Szegedy et
al. 2016; 0.1 as in Vaswani et al. 2017), scored by sacreBLEU (Post 2018, "A Call for Clarity in
Reporting BLEU Scores") on held-out pairs.

Batches: {"src": (B, S) source ids, "src_lengths": (B,), "tgt": (B, T) bos + target ids + eos,
"tgt_lengths": (B,)}, right-padded with pad = 0. The model reads tgt[:, :-1] and is scored on
tgt[:, 1:] at real (non-pad) positions.

Model protocol (transformer_seq2seq):
    logits = model(src, src_lengths, tgt_in)                       # (B, T, V)
    model.generate(src, src_lengths, bos_id, eos_id, max_len, temperature, top_k, top_p, generator)
    model.beam_search(src, src_lengths, bos_id, eos_id, beam_size, max_len, length_penalty)

Metrics: val loss (plain cross-entropy per target token, no smoothing) and token accuracy (teacher
forced) every validation; `bleu` on the first `bleu_pairs` pairs of the split, decoded as
`bleu_decode` says; `strata evaluate` adds `bleu_full`, beam search over the whole split.
The tokenizers come from `info` (src_tokenizer, tgt_tokenizer), so BLEU and predict need no files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from strata.config import check
from strata.data.tokenizers import BOS, EOS, PAD, tokenizer_from_bytes
from strata.errors import StrataError
from strata.models import build_model
from strata.tasks import TASKS
from strata.tasks.base import Task

GENERATE_OPTIONS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "n")


@dataclass(frozen=True)
class Seq2SeqTaskConfig:
    label_smoothing: float = 0.1
    beam_size: int = 4  # predict, `strata generate` without --temperature, and bleu_full
    length_penalty: float = 1.0  # beam score = log-probability / length^length_penalty
    max_new_tokens: int = 0  # longest translation in tokens; 0: the model's context
    bleu_pairs: int = 500  # sacreBLEU on this many pairs at every validation; 0 turns it off
    bleu_decode: Literal["greedy", "beam"] = "greedy"

    def __post_init__(self):
        check(0 <= self.label_smoothing < 1, "[task] label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        check(self.beam_size >= 1, "[task] beam_size", f"must be >= 1, got {self.beam_size}")
        check(self.length_penalty >= 0, "[task] length_penalty", f"must be >= 0, got {self.length_penalty}")
        check(self.max_new_tokens >= 0, "[task] max_new_tokens", f"must be >= 0 (0 = the model's context), "
              f"got {self.max_new_tokens}")
        check(self.bleu_pairs >= 0, "[task] bleu_pairs", f"must be >= 0, got {self.bleu_pairs}")


def trim(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(src, src_lengths, tgt, tgt_lengths) as int64, cut to the longest row of this batch."""
    sl = batch["src_lengths"].long()
    src = batch["src"][:, : max(1, int(sl.max()))].long()
    if "tgt" not in batch:
        return src, sl, None, None
    tl = batch["tgt_lengths"].long()
    return src, sl, batch["tgt"][:, : max(2, int(tl.max()))].long(), tl


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@TASKS.register("seq2seq")
class Seq2Seq(Task):
    Config = Seq2SeqTaskConfig
    input_key = "src"
    export_refusal = ("a translation is a beam search that calls the decoder once per output token, a loop with "
                      "a data-dependent end that one exported graph does not hold; translate with `strata predict`")

    def __init__(self, cfg: Seq2SeqTaskConfig, model, info: dict):
        super().__init__(cfg, model, info)
        self.model = build_model(model, **info)
        self.bos_id = int(info.get("bos_id", BOS))
        self.eos_id = int(info.get("eos_id", EOS))
        self._src_tok = self._tgt_tok = None
        self._gathered: list[tuple[torch.Tensor, torch.Tensor, list[list[int]]]] = []

    def forward(self, src, src_lengths, tgt_in):
        return self.model(src, src_lengths, tgt_in)

    # --- tokenizers ---------------------------------------------------------------------------
    def tokenizers(self):
        if self._tgt_tok is None:
            if "tgt_tokenizer" not in self.info:
                raise StrataError("the seq2seq task needs the data set's tokenizers in info (src_tokenizer, "
                                  "tgt_tokenizer); train it on a translation data set such as eng_fra")
            self._src_tok = tokenizer_from_bytes(self.info["src_tokenizer"].encode("utf-8"), "info src_tokenizer")
            self._tgt_tok = tokenizer_from_bytes(self.info["tgt_tokenizer"].encode("utf-8"), "info tgt_tokenizer")
        return self._src_tok, self._tgt_tok

    # --- training -----------------------------------------------------------------------------
    def _logits(self, batch):
        src, sl, tgt, _ = trim(batch)
        logits = self.model(src, sl, tgt[:, :-1])  # (B, T-1, V): teacher forcing
        return logits, tgt[:, 1:]

    def training_step(self, batch):
        logits, y = self._logits(batch)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=PAD,
                               label_smoothing=self.cfg.label_smoothing)

    # --- validation ---------------------------------------------------------------------------
    def validation_start(self):
        self._gathered = []

    def validation_step(self, batch):
        logits, y = self._logits(batch)
        real = y != PAD
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=PAD,
                              reduction="sum")
        correct = ((logits.argmax(-1) == y) & real).sum()
        n = real.sum()
        have = sum(len(g[2]) for g in self._gathered)
        quota = -(-self.cfg.bleu_pairs // self.world_size())  # each process decodes its share
        if quota and have < quota:
            k = quota - have
            src, sl, tgt, tl = trim(batch)
            refs = [row[1:length - 1] for row, length in zip(tgt[:k].tolist(), tl[:k].tolist())]
            self._gathered.append((src[:k], sl[:k], refs))
        return {"loss": (nll, n), "token_acc": (correct, n)}

    def validation_end(self):
        if not self.cfg.bleu_pairs:
            return {}
        hyps, refs = [], []
        _, tgt_tok = self.tokenizers()
        for src, sl, ref_ids in self._gathered:
            hyps += [tgt_tok.decode(h) for h in self.translate_ids(src, sl, self.cfg.bleu_decode)]
            refs += [tgt_tok.decode(r) for r in ref_ids]
        self._gathered = []
        pairs = self.gather_objects(list(zip(hyps, refs)))[: self.cfg.bleu_pairs]
        if not pairs:
            return {}
        return {"bleu": corpus_bleu([h for h, _ in pairs], [r for _, r in pairs])}

    def evaluate_report(self, bundle, split, run_dir):
        """sacreBLEU of beam search over every pair of the split."""
        data = getattr(bundle, split)
        if data is None or len(data) == 0:
            return {}
        device = next(self.parameters()).device
        t = data.tensors if hasattr(data, "tensors") else None
        if t is None:
            raise StrataError("seq2seq evaluate_report needs an in-memory split (TensorSplit)")
        _, tgt_tok = self.tokenizers()
        hyps, refs = [], []
        bs = 128
        for i in range(0, len(data), bs):
            batch = {k: v[i:i + bs].to(device) for k, v in t.items()}
            src, sl, tgt, tl = trim(batch)
            hyps += [tgt_tok.decode(h) for h in self.translate_ids(src, sl, "beam")]
            refs += [tgt_tok.decode(row[1:n - 1]) for row, n in zip(tgt.tolist(), tl.tolist())]
        return {"bleu_full": corpus_bleu(hyps, refs), "bleu_full_pairs": float(len(refs))}

    # --- use ----------------------------------------------------------------------------------
    def max_len(self) -> int:
        return self.cfg.max_new_tokens or self.model.context_size

    @torch.no_grad()
    def translate_ids(self, src, src_lengths, decode: str = "beam", **sampling) -> list[list[int]]:
        was_training = self.training
        self.eval()
        try:
            if decode == "beam":
                return self.model.beam_search(src, src_lengths, self.bos_id, self.eos_id, self.cfg.beam_size,
                                              self.max_len(), self.cfg.length_penalty)
            return self.model.generate(src, src_lengths, self.bos_id, self.eos_id, self.max_len(), **sampling)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def translate(self, sentences: list[str], decode: str = "beam") -> list[str]:
        """English sentences -> French, through the data set's tokenizers."""
        src_tok, tgt_tok = self.tokenizers()
        rows = [src_tok.encode(s)[: self.model.context_size] for s in sentences]
        device = next(self.parameters()).device
        src = torch.zeros(len(rows), max(1, max(len(r) for r in rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            src[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows])
        return [tgt_tok.decode(h) for h in self.translate_ids(src.to(device), lengths.to(device), decode)]

    @torch.no_grad()
    def predict_step(self, batch):
        _, tgt_tok = self.tokenizers()
        src, sl, _, _ = trim(batch)
        return [{"translation": tgt_tok.decode(h)} for h in self.translate_ids(src, sl, "beam")]

    def example_input(self, batch):
        src, sl, tgt, _ = trim(batch)
        return src, sl, tgt[:, :-1]

    @torch.no_grad()
    def generate(self, request: dict, run_dir) -> dict:
        """`strata generate RUN_DIR --prompt "I am cold."`: beam search, or sampling when --temperature,
        --top-k or --top-p is given (--n samples, --seed)."""
        unknown = [k for k, v in request.items() if k not in GENERATE_OPTIONS and v is not None]
        if unknown:
            raise StrataError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} do not apply to "
                              "a translation model; it takes --prompt, --max-new-tokens, --temperature, --top-k, "
                              "--top-p, --seed, --n")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise StrataError('--prompt: give the English sentence to translate, e.g. --prompt "I am cold."')
        max_new = request.get("max_new_tokens")
        if max_new is not None and (not isinstance(max_new, int) or max_new <= 0):
            raise StrataError(f"--max-new-tokens: must be an integer > 0, got {max_new!r}")
        temperature, top_k, top_p = request.get("temperature"), request.get("top_k"), request.get("top_p")
        if temperature is not None and not temperature > 0:
            raise StrataError(f"--temperature: must be > 0, got {temperature}; leave it out for beam search")
        if top_k is not None and top_k < 1:
            raise StrataError(f"--top-k: must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise StrataError(f"--top-p: must be in (0, 1], got {top_p}")
        n = request.get("n") or 1
        if not isinstance(n, int) or n < 1:
            raise StrataError(f"--n: must be an integer >= 1, got {n!r}")
        src_tok, tgt_tok = self.tokenizers()
        ids = src_tok.encode(" ".join(prompt.split()))[: self.model.context_size]
        device = next(self.parameters()).device
        src = torch.tensor([ids] * n, dtype=torch.long, device=device)
        lengths = torch.full((n,), len(ids), dtype=torch.long, device=device)
        limit = min(max_new or self.max_len(), self.model.context_size)
        sampling = temperature is not None or top_k is not None or top_p is not None
        self.eval()
        if not sampling:
            out = self.model.beam_search(src[:1], lengths[:1], self.bos_id, self.eos_id, self.cfg.beam_size, limit,
                                         self.cfg.length_penalty)
            return {"prompt": prompt, "text": tgt_tok.decode(out[0]), "decode": f"beam {self.cfg.beam_size}"}
        seed = request.get("seed")
        seed = int(seed) if seed is not None else int(torch.seed() % 2**31)
        generator = torch.Generator(device=device).manual_seed(seed)
        out = self.model.generate(src, lengths, self.bos_id, self.eos_id, limit, temperature or 1.0, top_k,
                                  top_p if top_p is not None and top_p < 1 else None, generator)
        texts = [tgt_tok.decode(h) for h in out]
        result = {"prompt": prompt, "text": texts[0], "decode": "sample", "seed": seed,
                  "temperature": temperature or 1.0, "top_k": top_k, "top_p": top_p}
        if n > 1:
            result["samples"] = texts
        return result
