"""Token attributions for text runs: how much each token of a sentence (or a prompt) moves one score.

Token ids are not differentiable, so attributions are taken at the output of the model's token
embedding (an nn.Embedding, found by its vocabulary size) and summed over its width:
- "integrated_gradients": Captum's LayerIntegratedGradients from the embeddings of pad tokens (the
  baseline: the same length, nothing said) to the sentence's; the attributions sum to
  f(x) - f(pads) up to the returned gap.
- "gradient_x_input": the gradient times the embedding (LayerGradientXActivation).

Shown as coloured tokens: on a terminal through rich (red raises the score, blue lowers it), and as
an HTML fragment (`tokens_html`) for the report and the served page.
"""

from __future__ import annotations

import html
from typing import Callable

import torch
from torch import nn

from strata.errors import StrataError

METHODS = ("integrated_gradients", "gradient_x_input")


def token_embedding(model: nn.Module, vocab_size: int | None = None) -> nn.Embedding:
    """The model's token embedding: the first nn.Embedding with `vocab_size` rows (position tables
    are embeddings too), else the first nn.Embedding."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not embeddings:
        raise StrataError("token attributions need a model that embeds token ids (an nn.Embedding); this run's "
                          "model has none")
    return next((m for m in embeddings if m.num_embeddings == vocab_size), embeddings[0])


def token_attributions(fn: Callable, embedding: nn.Module, tokens: torch.Tensor, target: torch.Tensor,
                       args: tuple = (), method: str = "integrated_gradients", steps: int = 32, pad_id: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attributions (B, T) per token, completeness gap f(x) - f(pads) - sum (B,) or None).
    fn(tokens, *args) -> (B, K) scores; target (B,) the score explained per row."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    if method not in METHODS:
        raise ValueError(f"unknown token attribution method {method!r}; known: {', '.join(METHODS)}")
    extra = tuple(args) or None
    # cuDNN computes no recurrent backward pass in eval mode; the native kernels do
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        if method == "integrated_gradients":
            attr, delta = LayerIntegratedGradients(fn, embedding).attribute(
                tokens, torch.full_like(tokens, pad_id), target=target, additional_forward_args=extra,
                n_steps=steps, method="riemann_middle", internal_batch_size=max(1, 4096 // len(tokens)) * len(tokens),
                return_convergence_delta=True)
            return attr.detach().float().sum(-1), -delta.detach().float()  # (B, T); Captum's delta is sum - (f(x) - f(x'))
        attr = LayerGradientXActivation(fn, embedding).attribute(tokens, target=target, additional_forward_args=extra)
        return attr.detach().float().sum(-1), None


def pieces(tok, ids: list[int]) -> list[str]:
    """Each token's own text (a leading space kept); ids that decode to nothing show as <id>."""
    out = []
    for i in ids:
        text = tok.decode([int(i)])
        out.append(text if text else f"<{int(i)}>")
    return out


def _colour(a: float, scale: float) -> tuple[int, int, int]:
    """White at 0, towards red (raises the score) or blue (lowers it) in proportion to |a| / scale."""
    s = min(1.0, abs(a) / scale) if scale > 0 else 0.0
    fade = int(round(255 * (1 - 0.75 * s)))
    return (255, fade, fade) if a >= 0 else (fade, fade, 255)


def _scale(tokens: list[dict]) -> float:
    return max([abs(t["attribution"]) for t in tokens] + [0.0])


def tokens_html(tokens: list[dict]) -> str:
    """[{"token", "attribution"}] -> a <span> per token with a background colour (red raises the score,
    blue lowers it) and the attribution as its title; text escaped."""
    scale = _scale(tokens)
    spans = []
    for t in tokens:
        r, g, b = _colour(t["attribution"], scale)
        spans.append(f'<span class="token" style="background:rgb({r},{g},{b})" '
                     f'title="{t["attribution"]:+.4f}">{html.escape(t["token"])}</span>')
    return '<span class="tokens">' + "".join(spans) + "</span>"


def tokens_text(tokens: list[dict], console=None) -> str:
    """The tokens with their colours for a terminal (rich); plain `token[+0.12]` pieces, joined as the
    text is, when the console is not a terminal. Returns what was printed."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    if not console.is_terminal:
        line = "".join(f"{t['token']}[{t['attribution']:+.3f}]" for t in tokens).strip()  # pieces keep their spaces
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        return line
    scale = _scale(tokens)
    text = Text()
    for t in tokens:
        r, g, b = _colour(t["attribution"], scale)
        text.append(t["token"], style=f"black on rgb({r},{g},{b})")
    console.print(text, soft_wrap=True)
    return text.plain
