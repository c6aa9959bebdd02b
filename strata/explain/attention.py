"""Attention maps of a transformer run: for one input, the weights each self-attention layer and head
gives every query position over the key positions, read from the slow path of strata.nn.attention
(`record_attention`), which equals the fused kernels' output. A picture of where the model looks,
not a proof of why it answers (Jain & Wallace 2019, "Attention is not Explanation").
"""

from __future__ import annotations

from pathlib import Path

import torch

from strata.errors import StrataError
from strata.nn.attention import record_attention

# Token labels are drawn on the axes up to this many positions.
LABELLED_TOKENS = 24


def attention_maps(task, tokens: torch.Tensor) -> torch.Tensor:
    """(T,) token ids of one input -> (layers, heads, T', T') self-attention weights, rows summing to
    1 over keys (T' = T, or T + 1 with a [CLS] token). Layers are the model's self-attention modules in
    order ("....attn"); cross-attention is left out."""
    ids = tokens.reshape(1, -1).long()
    with torch.no_grad(), record_attention(task) as maps:
        task.explain_scores(ids)
    layers = [calls[0][0] for name, calls in maps.items() if name.endswith(".attn") and calls]  # (H, T, T) each
    if not layers:
        raise StrataError("attention maps need a transformer run (self-attention layers); this run's model has "
                          "none; use --method integrated_gradients for its token attributions")
    return torch.stack(layers).float().cpu()  # (L, H, T', T')


def draw_attention(maps: torch.Tensor, labels: list[str], path) -> Path:
    """A PNG grid of the maps, a row per layer and a column per head (queries down, keys across),
    with the tokens on the axes when there are at most LABELLED_TOKENS of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, T, _ = maps.shape
    cell = 2.2 if T <= LABELLED_TOKENS else 1.6
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 0.6, cell * L + 0.4), squeeze=False)
    show = labels if len(labels) == T and T <= LABELLED_TOKENS else None
    for i in range(L):
        for j in range(H):
            ax = axes[i][j]
            ax.imshow(maps[i, j].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {i + 1}, head {j + 1}", fontsize=7)
            if show:
                ax.set_xticks(range(T), show, rotation=90, fontsize=5)
                ax.set_yticks(range(T), show, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
