"""Autoregressive language modelling: next-token cross-entropy over valid positions; perplexity and
bits per character; `strata generate` with temperature, top-k and top-p sampling.

Batches: {"tokens": (B, T + 1)}; the model reads tokens[:, :-1] and is scored on tokens[:, 1:].
Target positions holding the pad id (0) are not scored.

Any model that follows the protocol of strata.nn.sampling plugs in (rnn_lm, gpt):
    logits, state = model(tokens, state=None)   # tokens (B, T) -> logits (B, T, V)
    model.context_size                          # int, or None for a recurrent state

Metrics: loss (nats per token), ppl = exp(loss), bpc = loss / ln 2 / (characters per token of the
validation text; 1 for a character tokenizer), so char and BPE models compare on the same scale.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from strata.config import check
from strata.data.tokenizers import PAD, load_tokenizer
from strata.errors import StrataError
from strata.models import build_model
from strata.nn.sampling import generate_tokens
from strata.tasks import TASKS
from strata.tasks.base import Task

GENERATE_OPTIONS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "n")
# One call's bound on --max-new-tokens (minutes on a CPU): a bigger number is almost always a typo, and
# would run for hours without a word.
MAX_NEW_TOKENS = 20_000


@dataclass(frozen=True)
class LanguageModelConfig:
    # defaults of `strata generate` for this run (each overridden by its command-line option)
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1: no nucleus filtering

    def __post_init__(self):
        check(self.max_new_tokens >= 1, "[task] max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        check(self.temperature > 0, "[task] temperature", f"must be > 0, got {self.temperature}")
        check(self.top_k >= 0, "[task] top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        check(0 < self.top_p <= 1, "[task] top_p", f"must be in (0, 1], got {self.top_p}")


def _number(request: dict, key: str, kind, default):
    value = request.get(key)
    if value is None:
        return default
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise StrataError(f"{flag}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def check_request(request: dict, defaults: LanguageModelConfig) -> dict:
    """Validate `strata generate` options; a StrataError names the option, the value and the fix."""
    unknown = [k for k, v in request.items() if k not in GENERATE_OPTIONS and v is not None]
    if unknown:
        raise StrataError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in unknown)} do not apply to a "
                          f"language model; it takes --prompt, --max-new-tokens, --temperature, --top-k, --top-p, "
                          f"--seed, --n")
    prompt = request.get("prompt") or ""
    if not isinstance(prompt, str):
        raise StrataError(f"--prompt: expected text, got {prompt!r}")
    r = {
        "prompt": prompt,
        "max_new_tokens": _number(request, "max_new_tokens", int, defaults.max_new_tokens),
        "temperature": _number(request, "temperature", float, defaults.temperature),
        "top_k": _number(request, "top_k", int, defaults.top_k or None),
        "top_p": _number(request, "top_p", float, defaults.top_p),
        "seed": _number(request, "seed", int, None),
        "n": _number(request, "n", int, 1),
    }
    if r["max_new_tokens"] <= 0:
        raise StrataError(f"--max-new-tokens: must be > 0, got {r['max_new_tokens']}; e.g. --max-new-tokens 200")
    if r["temperature"] <= 0:
        raise StrataError(f"--temperature: must be > 0, got {r['temperature']}; 1 samples the model as trained, "
                          f"lower values (0.5) are more conservative")
    if r["top_k"] is not None and r["top_k"] < 1:
        raise StrataError(f"--top-k: must be >= 1, got {r['top_k']}; leave it out to keep every token")
    if not 0 < r["top_p"] <= 1:
        raise StrataError(f"--top-p: must be in (0, 1], got {r['top_p']}; e.g. --top-p 0.9 (1 keeps every token)")
    if r["n"] < 1:
        raise StrataError(f"--n: must be >= 1, got {r['n']}")
    if r["max_new_tokens"] > MAX_NEW_TOKENS:
        warnings.warn(f"--max-new-tokens {r['max_new_tokens']:,} is more than one call generates; generating "
                      f"{MAX_NEW_TOKENS:,} tokens (give the end of the text as --prompt to continue it)", stacklevel=2)
        r["max_new_tokens"] = MAX_NEW_TOKENS
    return r


class TextStream:
    """New tokens of the first sample -> the text they add, piece by piece. A token may end inside a
    character (byte-level BPE), so a piece is given only once its text is settled: the decoded text so far,
    less a trailing replacement character, when it extends what was already given."""

    def __init__(self, tok, on_text: Callable[[str], None]):
        self.tok, self.on_text = tok, on_text
        self.ids: list[int] = []
        self.given = ""

    def add(self, next_ids: torch.Tensor) -> None:
        self.ids.append(int(next_ids[0]))
        self._give(self.tok.decode(self.ids).rstrip("\ufffd"))

    def finish(self) -> None:
        self._give(self.tok.decode(self.ids))

    def _give(self, text: str) -> None:
        if len(text) > len(self.given) and text.startswith(self.given):
            self.on_text(text[len(self.given):])
            self.given = text


@TASKS.register("language_model")
class LanguageModel(Task):
    Config = LanguageModelConfig
    input_key = "tokens"

    def __init__(self, cfg: LanguageModelConfig, model, info: dict):
        super().__init__(cfg, model, info)
        self.model = build_model(model, **info)
        self.chars_per_token = float(info.get("chars_per_token", 1.0))
        self._nll = self._count = None

    def forward(self, tokens: torch.Tensor, state=None):
        return self.model(tokens, state=state)

    def _nll_sum(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = batch["tokens"].long()
        x, y = tokens[:, :-1], tokens[:, 1:]  # (B, T) inputs and next-token targets
        logits, _ = self.model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=PAD,
                              reduction="sum")
        return nll, (y != PAD).sum()

    def training_step(self, batch):
        nll, n = self._nll_sum(batch)
        return nll / n.clamp(min=1)

    def validation_start(self):
        self._nll = self._count = None

    def validation_step(self, batch):
        nll, n = self._nll_sum(batch)
        nll, n = nll.detach(), n.detach()
        self._nll = nll if self._nll is None else self._nll + nll
        self._count = n if self._count is None else self._count + n
        return {"loss": (nll, n), "bpc": (nll / (math.log(2) * self.chars_per_token), n)}

    def validation_end(self):
        local = torch.zeros(1, 2, dtype=torch.float64)
        if self._nll is not None:
            local[0, 0], local[0, 1] = float(self._nll), float(self._count)
        nll, count = self.gather(local).sum(0).tolist()
        if count == 0:
            return {}
        return {"ppl": math.exp(min(nll / count, 700.0))}

    def evaluate_report(self, bundle, split, run_dir):
        out = {}
        if "unigram_val_loss" in self.info:
            out["unigram_val_loss"] = self.info["unigram_val_loss"]  # the trivial baseline to beat
        return out

    def example_input(self, batch):
        return batch["tokens"][:, :-1].long()

    # --- explain: which earlier tokens the next-token prediction rests on ----------------------
    def explain_scores(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) logits of the token after each prompt's last real position (prompts right-padded;
        the model is causal, so padding after a position never reaches it)."""
        logits, _ = self.model(tokens)  # (B, T, V)
        last = (lengths if lengths is not None else torch.full((len(tokens),), tokens.shape[1])) - 1
        return logits[torch.arange(len(tokens), device=logits.device), last.to(logits.device).long()]

    def explain_inputs(self, inputs, spec, info, run_dir) -> dict:
        """Prompts -> {"tokens" (B, T) right-padded, "lengths"}, each cut to its last context_size tokens."""
        from strata.data.text import check_sentences, pad_batch

        check_sentences(inputs)
        tok = load_tokenizer(run_dir)
        context = self.context_size()
        return pad_batch([tok.encode(s, warn=False)[-context:] if context else tok.encode(s, warn=False)
                          for s in inputs])

    def explain_args(self, batch):
        return batch["tokens"].long(), (batch["lengths"],)

    # --- generation -------------------------------------------------------------------------
    def context_size(self) -> int | None:
        return getattr(self.model, "context_size", None) or self.info.get("block_size")

    @torch.no_grad()
    def generate(self, request: dict, run_dir, on_text: Callable[[str], None] | None = None) -> dict:
        """`strata generate`; `on_text(piece)` receives the first sample's new text as it is drawn (the
        pieces join to its text after the prompt), for a server that streams it."""
        r = check_request(request, self.cfg)
        tok = load_tokenizer(run_dir)
        prompt = r["prompt"]
        if prompt:
            ids = tok.encode(prompt)  # warns about characters never seen in training
        else:
            # an empty prompt starts from a newline (the start of a line of text), or from <bos>
            newline = tok.encode("\n", warn=False)
            ids = newline if newline and tok.unk_id not in newline else [tok.bos_id]
        context = self.context_size()
        if context and len(ids) > context:
            warnings.warn(f"the prompt is {len(ids)} tokens, longer than the model's context of {context}; "
                          f"only its last {context} tokens are used", stacklevel=2)
            ids = ids[-context:]
        device = next(self.parameters()).device
        generator = torch.Generator(device=device)
        seed = r["seed"] if r["seed"] is not None else int(torch.seed() % 2**31)
        generator.manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            start = torch.tensor([ids] * r["n"], dtype=torch.long, device=device)  # (n, T)
            stream = TextStream(tok, on_text) if on_text is not None else None
            out = generate_tokens(self.model, start, r["max_new_tokens"], r["temperature"], r["top_k"],
                                  r["top_p"] if r["top_p"] < 1 else None, generator,
                                  on_token=stream.add if stream is not None else None)
        finally:
            self.train(was_training)
        samples = [prompt + tok.decode(row[len(ids):].tolist()) for row in out]
        if stream is not None:
            stream.finish()
        result = {"text": samples[0], "prompt": prompt, "new_tokens": r["max_new_tokens"], "seed": seed,
                  "temperature": r["temperature"], "top_k": r["top_k"], "top_p": r["top_p"]}
        if r["n"] > 1:
            result["samples"] = samples
        return result

    def export_graph(self, batch):
        """`strata export`: the model's forward without its state, tokens (B, T) -> next-token logits,
        with a free length up to the context (strata/export/graph.py)."""
        from strata.export.graph import next_token_graph

        return next_token_graph(self.model, batch["tokens"][:, :-1].long(), self.context_size())
