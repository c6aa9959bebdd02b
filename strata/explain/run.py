"""`strata explain RUN_DIR input...` (and the server's /explain): attribute a trained run's score for
each input to the input's parts, by the kind of input the run's data set reads (`info["kind"]`):

- image, table, timeseries, audio, array: attributions per pixel / feature / step (attributions.py);
  images are drawn as heatmaps, the others list their `top` features;
- text: attributions per token at the embedding (text.py), for sentence classifiers (the class
  score) and language models (the next token's logit after a prompt: which earlier tokens the
  prediction rests on); `--method attention` draws a transformer's attention maps (attention.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from strata.errors import StrataError

TEXT_METHODS = ("integrated_gradients", "gradient_x_input", "attention")


def input_kind(info: dict) -> str:
    """The kind of input a run reads, as its data set recorded it ("image", "table", "text", ...)."""
    return info.get("kind") or info.get("input") or "array"


def check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1024:
        raise StrataError(f"--steps must be a whole number from 1 to 1024, got {steps!r}")


def resolve_target(target, names: list[str], scores: torch.Tensor) -> torch.Tensor:
    """(B,) score index per example: the highest score, or `target` (an index or a name) for all."""
    if target is None:
        return scores.argmax(1)
    k = scores.shape[1]
    idx = names.index(target) if target in names else (int(target) if str(target).lstrip("-").isdigit() else None)
    if idx is None or not 0 <= idx < k:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise StrataError(f"--target must be a score index 0..{k - 1}" + (f" or a name ({shown})" if names else "")
                          + f", got {target!r}")
    return torch.full((len(scores),), idx, dtype=torch.long, device=scores.device)


def attributions(task, x: torch.Tensor, target: torch.Tensor, method: str, args: tuple = (), steps: int = 32,
                 baseline: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(attributions, completeness gap or None) of `task.explain_scores(x, *args)[:, target]` by the kind
    of input the task reads: per token (B, T) for text, shaped like x otherwise. The baseline of text
    is pad tokens; of other inputs `baseline` (default zeros)."""
    from strata.explain.attributions import attribute, last_conv
    from strata.explain.text import token_attributions, token_embedding

    if input_kind(task.info) == "text":
        from strata.data.tokenizers import PAD

        embedding = token_embedding(task, task.info.get("vocab_size"))
        return token_attributions(task.explain_scores, embedding, x, target, args, method, steps,
                                  task.info.get("pad_id", PAD))
    return attribute(method, task.explain_scores, x, target, baseline=baseline, steps=steps, args=args,
                     layer=last_conv(task) if method == "grad_cam" else None)


def explain_run(run_dir, inputs: list[str], method: str = "integrated_gradients", target=None, steps: int = 32,
                out=None, top: int = 10, device: str | None = None) -> list[dict]:
    """One result per input: {input, target, score, method, attribution_sum, completeness_gap (integrated
    gradients), top [{feature, attribution}] (all but images), tokens [{token, attribution}] (text),
    out (the PNG drawn: images' heatmaps, attention maps)}.
    Images: a PNG at `out` (default RUN_DIR/explain.png) with one row per input (the input, then red
    where it raises the score and blue where it lowers it). Attention: RUN_DIR/attention.png."""
    from strata.api import load_run
    from strata.data import DATASETS
    from strata.device import pick_device

    check_steps(steps)
    dev = pick_device(device or "auto")
    run = load_run(run_dir, device=dev)
    task = run.task.eval()
    spec = DATASETS.get(run.cfg.data.name)
    kind = input_kind(run.info)
    if kind == "text":
        return _explain_text(run, task, spec, inputs, method, target, steps, out, top, dev)
    return _explain_values(run, task, spec, kind, inputs, method, target, steps, out, top, dev)


def _feature_label(info: dict, kind: str, shape: tuple[int, ...]):
    """Feature index -> a name: a table's column, a time series' column and step, an audio frame and
    feature channel, else the index."""
    columns, feature_names = info.get("inputs") or [], info.get("feature_names") or []
    if len(shape) == 2 and len(columns) == shape[1]:  # time series: (time steps, columns)
        return lambda f: f"{columns[f % shape[1]]} at step {f // shape[1] - shape[0]}"
    if len(shape) == 2 and kind == "audio":  # (frames, feature channels)
        return lambda f: f"frame {f // shape[1]}, channel {f % shape[1]}"
    if len(shape) == 1 and len(feature_names) == shape[0]:  # table rows
        return lambda f: feature_names[f]
    return lambda f: str(list(map(int, torch.unravel_index(torch.tensor(f), shape))))


def _top(attr_row: torch.Tensor, label, top: int) -> list[dict]:
    flat = attr_row.flatten()
    order = flat.abs().argsort(descending=True)[:top].tolist()
    return [{"feature": label(f), "attribution": round(float(flat[f]), 6)} for f in order]


def _result(inp: str, names: list[str], j: int, score: float, method: str, attr_sum: float, gap) -> dict:
    r = {"input": inp, "target": names[j] if j < len(names) else j, "score": round(score, 6), "method": method,
         "attribution_sum": round(attr_sum, 6)}
    if gap is not None:
        r["completeness_gap"] = round(float(gap), 6)  # f(x) - f(baseline) - sum; small: steps suffice
    return r


def image_baseline(x: torch.Tensor, info: dict) -> torch.Tensor | None:
    """A black image in the model's input units (normalised when the data set normalises), else None (zeros)."""
    from strata.data.images import apply_normalize

    stats = info.get("normalize")
    return apply_normalize(torch.zeros_like(x).cpu(), stats).to(x.device) if isinstance(stats, dict) else None


def _explain_values(run, task, spec, kind, inputs, method, target, steps, out, top, dev) -> list[dict]:
    from strata.evaluate import example_labels
    from strata.explain.attributions import check_method, heatmap
    from strata.report.grid import save_grid
    from strata.run_folder import RunFolder
    from strata.train.loader import to_device

    check_method(method, kind)
    x, args = task.explain_args(to_device(task.explain_inputs(inputs, spec, run.info, run.run_dir), dev))
    with torch.no_grad():
        scores = task.explain_scores(x, *args).float()  # a task without scores says so first
    if not x.is_floating_point():
        raise StrataError("attributions need real-valued inputs (images, table rows, audio frames, time series); "
                          "this run reads token ids")
    names = task.explain_names()
    t = resolve_target(target, names, scores)
    image = kind == "image"
    attr, gap = attributions(task, x, t, method, args, steps, image_baseline(x, run.info) if image else None)
    label = _feature_label(run.info, kind, tuple(attr.shape[1:]))
    results = []
    for i, inp in enumerate(example_labels(inputs, len(x))):
        j = int(t[i])
        r = _result(inp, names, j, float(scores[i, j]), method, float(attr[i].sum()), None if gap is None else gap[i])
        if not image:
            r["top"] = _top(attr[i], label, top)
        results.append(r)
    if image:
        shown = x.detach().cpu()
        stats = run.info.get("normalize")
        if isinstance(stats, dict):  # back to [0, 1] for display
            shape = (1, -1, 1, 1)
            shown = shown * torch.tensor(stats["std"]).view(shape) + torch.tensor(stats["mean"]).view(shape)
        path = save_grid(heatmap(shown, attr.cpu()), out or RunFolder(run.run_dir).artefact("explain.png"), nrow=2)
        for r in results:
            r["out"] = str(path)
    return results


def vocabulary(tok) -> list[str]:
    """Every token id's text, for naming a language model's next token."""
    from strata.explain.text import pieces

    return pieces(tok, list(range(tok.vocab_size)))


def _explain_text(run, task, spec, inputs, method, target, steps, out, top, dev) -> list[dict]:
    from strata.data.tokenizers import UNK, load_tokenizer
    from strata.explain.attributions import check_method
    from strata.explain.text import pieces
    from strata.train.loader import to_device

    check_method(method, "text", TEXT_METHODS)
    batch = to_device(task.explain_inputs(inputs, spec, run.info, run.run_dir), dev)
    x, args = task.explain_args(batch)
    lengths = batch["lengths"].tolist()
    tok = load_tokenizer(run.run_dir)
    for s, row, n in zip(inputs, x.tolist(), lengths):
        if all(i == UNK for i in row[:n]):
            raise StrataError(f"{s!r} is made only of characters this run's tokenizer never saw in training (each "
                              f"became the unknown token), so there is nothing to explain; give a sentence in the "
                              f"language and alphabet of the training text")
    with torch.no_grad():
        scores = task.explain_scores(x, *args).float()
    names = task.explain_names() or vocabulary(tok)
    t = resolve_target(target, names, scores)
    if method == "attention":
        return _explain_attention(run, task, inputs, x, lengths, names, t, scores, tok, out)
    attr, gap = attributions(task, x, t, method, args, steps)
    results = []
    for i, inp in enumerate(inputs):
        n, j = lengths[i], int(t[i])
        r = _result(inp, names, j, float(scores[i, j]), method, float(attr[i, :n].sum()),
                    None if gap is None else gap[i])
        r["tokens"] = [{"token": p, "attribution": round(float(a), 6)}
                       for p, a in zip(pieces(tok, x[i, :n].tolist()), attr[i, :n])]
        r["top"] = _top(attr[i, :n], lambda f, toks=r["tokens"]: f"{toks[f]['token']!r} (token {f + 1})", top)
        results.append(r)
    return results


def _explain_attention(run, task, inputs, x, lengths, names, t, scores, tok, out) -> list[dict]:
    """Attention maps per input (a PNG each); the tokens carry the attention they receive in the last
    layer (mean over heads and query positions)."""
    from strata.explain.attention import attention_maps, draw_attention
    from strata.explain.text import pieces
    from strata.run_folder import RunFolder

    first = Path(out) if out else Path(RunFolder(run.run_dir).artefact("attention.png"))
    results = []
    for i, inp in enumerate(inputs):
        n, j = lengths[i], int(t[i])
        labels = pieces(tok, x[i, :n].tolist())
        maps = attention_maps(task, x[i, :n])  # (L, H, T', T')
        extra = maps.shape[-1] - n  # a [CLS] position in front
        shown = ["[CLS]"] * extra + labels
        path = first if i == 0 else first.with_name(f"{first.stem}-{i + 1}{first.suffix}")
        draw_attention(maps, shown, path)
        received = maps[-1].mean((0, 1))[extra:]  # (T,)
        r = _result(inp, names, j, float(scores[i, j]), "attention", float(received.sum()), None)
        r.update({"tokens": [{"token": p, "attribution": round(float(a), 6)} for p, a in zip(labels, received)],
                  "layers": int(maps.shape[0]), "heads": int(maps.shape[1]), "out": str(path)})
        results.append(r)
    return results
