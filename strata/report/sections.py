"""The sections of `strata report` (strata/report/html.py writes the page).

Every run gets the header facts, its test metrics, learning curves and resolved config. What else it
shows is the task's to say: TASK_SECTIONS maps a task name to the section functions that speak for it
(a classifier's confusion matrix, per-class table, top losses and feature hierarchy; a generator's
sample grid; ...). A section function takes the Context and returns a list of Sections; one that needs
what the run does not have (its data set offline, a checkpoint) says so in a note instead.

Kept fast (a small run's report in a few seconds): at most MAX_EXAMPLES test examples are evaluated (a
seeded random subset, as MNIST's test file is not uniform along its length), TOP_LOSSES examples are
attributed with IG_STEPS integrated-gradient steps, and the feature hierarchy probes PROBE_EXAMPLES
images and searches PATCH_EXAMPLES for its top patches.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from strata.errors import StrataError
from strata.report.html import Raw, Section, esc, figure, note, number, png_file, png_img, table
from strata.run_folder import RunFolder

MAX_EXAMPLES = 2000
TOP_LOSSES = 8
IG_STEPS = 16
PROBE_EXAMPLES = 256
PATCH_EXAMPLES = 500  # test images searched for the patches that excite each unit most
SAMPLES = 64  # a generator's grid
LM_SAMPLES, LM_TOKENS = 3, 240
TRANSLATIONS = 8
META = ("name", "steps", "epochs", "wall_time_s", "device", "processes", "torch", "seed", "weights_sha256", "run_dir")


class Context:
    """What the sections read: the run folder's files, and (loaded once, when a section asks) the
    trained run, its data and a seeded subset of its test split."""

    def __init__(self, folder: RunFolder, device: str | None):
        from strata.device import pick_device

        self.folder = folder
        self.device = pick_device(device or "auto")
        self.raw = folder.read_raw_config()
        self.info = folder.read_info()
        self.summary = folder.read_summary() or {}
        self.events = folder.read_metrics()
        self.task_name = str(self.raw.get("task", {}).get("name", ""))
        self.has_weights = folder.has_checkpoint("best") or folder.has_checkpoint("last")
        self.load_error = ""  # why the checkpoint did not load, when it did not
        self.tmp = Path(tempfile.mkdtemp(prefix="strata-report-"))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    @cached_property
    def run(self):
        from strata.api import load_run

        return load_run(self.folder.path, device=self.device)

    @cached_property
    def bundle(self):
        from strata.data import load_data

        return load_data(self.run.cfg.data)

    @cached_property
    def split(self) -> tuple[str, object, torch.Tensor]:
        """(split name, the split, the indices evaluated: all, or MAX_EXAMPLES of them in order)."""
        for name in ("test", "val"):
            data = getattr(self.bundle, name, None)
            if data is not None and len(data) > 0:
                n = len(data)
                idx = torch.arange(n) if n <= MAX_EXAMPLES else \
                    torch.randperm(n, generator=torch.Generator().manual_seed(0))[:MAX_EXAMPLES].sort().values
                return name, data, idx
        raise StrataError(f"data set '{self.run.cfg.data.name}' has neither a test nor a validation split to show "
                          "examples from")

    def batches(self, index: torch.Tensor):
        """The examples `index` of the evaluated split, in batches on the run's device."""
        from strata.data.base import TensorSplit
        from strata.train.loader import EpochBatches

        _, data, _ = self.split
        part = data.subset(index) if isinstance(data, TensorSplit) else torch.utils.data.Subset(data, index.tolist())
        bs = self.run.cfg.data.eval_batch_size or 2 * self.run.cfg.data.batch_size
        for _, batch in EpochBatches(part, bs, False, 0, self.device, collate=self.bundle.collate).epoch(0):
            yield batch

    def outputs(self, fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """fn(task, batch) for every evaluated example, and their targets y, on the CPU."""
        task = self.run.task.eval()
        out, ys = [], []
        with torch.no_grad():
            for batch in self.batches(self.split[2]):
                out.append(fn(task, batch).float().cpu())
                ys.append(batch["y"].cpu())
        return torch.cat(out), torch.cat(ys)

    def png(self, name: str) -> Path:
        return self.tmp / name


def guarded(title: str):
    """A section that cannot be made from what the run has (the data set not on this machine, ...)
    becomes a note saying why, instead of failing the whole report."""

    def wrap(fn: Callable[[Context], list[Section]]):
        def run(ctx: Context) -> list[Section]:
            try:
                return fn(ctx)
            except StrataError as e:
                return [Section(title, note(f"{title}: not shown: {e}"))]

        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return run

    return wrap


# --- every run -------------------------------------------------------------------------------------
def header(ctx: Context) -> tuple[str, list[tuple[str, str]]]:
    raw, s = ctx.raw, ctx.summary
    model = raw.get("model", {}).get("name", "?")
    facts = [("task", ctx.task_name or "?"), ("model", model)]
    if ctx.has_weights:
        facts.append(("parameters", f"{sum(p.numel() for p in ctx.run.task.parameters()):,}"))
    facts.append(("data", str(raw.get("data", {}).get("name", "?"))))
    if s:
        facts += [("device", f"{s.get('device', '?')}" + (f" x {s['processes']}" if s.get("processes", 1) > 1 else "")),
                  ("wall time", f"{s.get('wall_time_s', 0):,.1f} s"), ("steps", f"{s.get('steps', 0):,}"),
                  ("epochs", str(s.get("epochs", "?"))), ("torch", str(s.get("torch", "?")))]
    times = [e["time"] for e in ctx.events if isinstance(e.get("time"), (int, float))]
    if times:
        facts.append(("trained", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max(times)))))
    return str(raw.get("name") or ctx.folder.path.name), facts


def status(ctx: Context) -> list[Section]:
    """What is missing, said first: no checkpoint, or a run that has not finished."""
    lines = []
    if ctx.load_error:
        lines.append(f"The checkpoint did not load ({ctx.load_error}), so only the config, curves and logged metrics "
                     "are shown.")
    elif not ctx.has_weights:
        lines.append(f"This run has no checkpoint ({ctx.folder.checkpoint('last')} is empty): it stopped before its "
                     "first save, so only its config, curves and logged metrics are shown. Train it again (or "
                     f"`strata train {ctx.folder.config} --run-dir {ctx.folder.path} --resume` once a checkpoint "
                     "exists) and run `strata report` again.")
    if not ctx.summary:
        lines.append("This run has not finished (no summary.json): it is still training or was interrupted, so the "
                     "test metrics are missing and the figures below show its latest checkpoint.")
    return [Section("Status", "".join(note(t) for t in lines))] if lines else []


def metrics(ctx: Context) -> list[Section]:
    """The final figures: summary.json's test and validation metrics (else the last logged test event)."""
    figures = {k: v for k, v in ctx.summary.items() if k not in META and isinstance(v, (int, float))}
    if not figures:
        tests = [e for e in ctx.events if e.get("event") == "test"]
        figures = {k: v for k, v in (tests[-1] if tests else {}).items() if "/" in k}
    if not figures:
        return [Section("Test metrics", note("No test metrics were recorded: the run did not reach its end. "
                                             f"`strata evaluate {ctx.folder.path}` measures the checkpoint."),
                        "test-metrics")]
    order = sorted(figures, key=lambda k: (not k.startswith("test/"), not k.startswith("val/"), k))
    return [Section("Test metrics", table(["metric", "value"], [[k, figures[k]] for k in order], "metrics"),
                    "test-metrics")]


def curves(ctx: Context) -> list[Section]:
    from strata.report.plots import metric_curves

    path = metric_curves(ctx.events, ctx.png("curves.png"))
    if path is None:
        return [Section("Learning curves", note("No training or validation figures were logged yet."))]
    return [Section("Learning curves", figure(png_file(path, "learning curves"), "training (blue) and validation "
                                                                                  "(orange) figures per step"))]


def config(ctx: Context) -> list[Section]:
    text = ctx.folder.config.read_text(encoding="utf-8")
    return [Section("Config", f'<p class="muted">{esc(ctx.folder.config.name)}, as resolved (every default '
                              f"filled in): train it again with <code>strata train {esc(ctx.folder.config)}</code>"
                              f"</p><pre>{esc(text)}</pre>")]


# --- classifiers -----------------------------------------------------------------------------------
def class_scores(task, batch: dict) -> torch.Tensor:
    """(B, K) class scores of a batch, as `strata explain` attributes them."""
    x, args = task.explain_args(batch)
    return task.explain_scores(x, *args)


@guarded("Classifier")
def classifier(ctx: Context) -> list[Section]:
    """Confusion matrix, per-class precision / recall / F1, and the top losses with their attributions."""
    split, data, idx = ctx.split
    logits, y = ctx.outputs(class_scores)
    pred = logits.argmax(1)
    names = list(ctx.run.task.class_names)
    k = len(names)
    where = f"{len(y):,} {split} examples" + (f" (a seeded random subset of {len(data):,})" if len(y) < len(data)
                                              else "")
    m = confusion(y.numpy(), pred.numpy(), k)
    p, r, f1, support = per_class(m)
    acc = float((pred == y).double().mean())
    rows = [[names[i], Raw(f"{p[i]:.3f}"), Raw(f"{r[i]:.3f}"), Raw(f"{f1[i]:.3f}"), int(support[i])] for i in range(k)]
    rows.append([Raw("<b>macro average</b>"), Raw(f"{p.mean():.3f}"), Raw(f"{r.mean():.3f}"), Raw(f"{f1.mean():.3f}"),
                 int(support.sum())])
    shares = (f'<p class="muted">On {where}; accuracy {acc:.3f}.</p>'
                 + table(["class", "precision", "recall", "F1", "support"], rows, "per-class"))
    losses = F.cross_entropy(logits, y, reduction="none")
    return [Section("Confusion matrix", f'<p class="muted">On {where}: rows are the true class, columns the '
                                        "predicted one; the diagonal is right.</p>" + matrix_html(m, names, ctx)),
            Section("Per-class precision and recall", shares),
            Section("Top losses", top_losses(ctx, idx, logits, y, losses, names))]


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: row the true class, column the predicted one (sklearn's confusion_matrix, without
    importing scikit-learn, which costs seconds)."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def per_class(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """precision, recall, F1 and support per class from the confusion matrix (0 where undefined, as
    sklearn's zero_division=0)."""
    right, predicted, support = np.diag(m).astype(float), m.sum(0), m.sum(1)
    p = np.divide(right, predicted, out=np.zeros_like(right), where=predicted > 0)
    r = np.divide(right, support, out=np.zeros_like(right), where=support > 0)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(right), where=(p + r) > 0)
    return p, r, f1, support


def matrix_html(m: np.ndarray, names: list[str], ctx: Context) -> str:
    """The confusion matrix as a table of counts (each cell shaded by its share of the row), or as an
    image when there are too many classes for a table."""
    if len(names) > 30:
        return figure(png_file(_matrix_png(m, names, ctx), "confusion matrix"), "share of each true class (row)")
    rows_total = m.sum(1, keepdims=True).clip(min=1)
    head = '<tr><th class="row">true \\ predicted</th>' + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
    body = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            share = m[i, j] / rows_total[i, 0]
            colour = (31, 111, 180) if i == j else (214, 69, 65)
            ink = "#fff" if share > 0.55 else "#1d232b"
            bg = f"rgba({colour[0]},{colour[1]},{colour[2]},{0.08 + 0.92 * share:.2f})" if m[i, j] else "transparent"
            cells.append(f'<td style="background:{bg};color:{ink}">{m[i, j]}</td>')
        body.append(f'<tr><th class="row">{esc(name)}</th>{"".join(cells)}</tr>')
    return f'<table id="confusion" class="matrix"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _matrix_png(m: np.ndarray, names: list[str], ctx: Context) -> Path:
    from strata.report.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 7.5))
    ax.imshow(m / m.sum(1, keepdims=True).clip(min=1), cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    step = max(1, len(names) // 25)
    ax.set_xticks(range(0, len(names), step), names[::step], rotation=90, fontsize=6)
    ax.set_yticks(range(0, len(names), step), names[::step], fontsize=6)
    fig.tight_layout()
    path = ctx.png("confusion.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def top_losses(ctx: Context, idx: torch.Tensor, logits, y, losses, names) -> str:
    """The TOP_LOSSES examples the run got most wrong (fastai's plot_top_losses), highest loss first, each
    with what it predicted and why: an image's attribution heatmap, a table row's top features, a text."""
    from strata.explain.run import input_kind

    order = losses.argsort(descending=True)[:TOP_LOSSES]
    probs = logits.softmax(1)
    pred = logits[order].argmax(1)
    show = SHOW.get(input_kind(ctx.info), show_plain)
    shown: list[tuple[str, str]] = []
    for batch in ctx.batches(idx[order]):  # in order of loss
        shown += show(ctx, batch, pred[len(shown):len(shown) + len(batch["y"])].to(ctx.device))
    items = []
    for n, i in enumerate(order.tolist()):
        t, p = int(y[i]), int(pred[n])
        caption = (f"<b>true {esc(names[t])}</b>, predicted {esc(names[p])} ({float(probs[i, p]):.0%}); "
                   f"loss {float(losses[i]):.3f}; p(true) {float(probs[i, t]):.1%}")
        items.append(figure(shown[n][0], caption + shown[n][1], f'class="top-loss" data-loss="{float(losses[i]):.6f}"'))
    return ('<p class="muted">The examples with the highest loss, highest first; the attribution explains the '
            "predicted class (integrated gradients: red raised its score, blue lowered it).</p>"
            f'<div class="gallery" id="top-loss-examples">{"".join(items)}</div>')


def _attributions(ctx: Context, batch: dict, target: torch.Tensor) -> torch.Tensor:
    """Integrated gradients of the `target` scores: per token (B, T) for text, shaped like x otherwise."""
    from strata.explain.run import attributions

    task = ctx.run.task
    x, args = task.explain_args(batch)
    baseline = None
    stats = ctx.info.get("normalize")
    if x.dim() == 4 and isinstance(stats, dict):  # a black image, in the model's normalised units
        from strata.data.images import apply_normalize

        baseline = apply_normalize(torch.zeros_like(x).cpu(), stats).to(x.device)
    attr, _ = attributions(task, x, target, "integrated_gradients", args, IG_STEPS, baseline)
    return attr.detach().float().cpu()


def show_image(ctx: Context, batch: dict, pred: torch.Tensor) -> list[tuple[str, str]]:
    from strata.explain.attributions import heatmap
    from strata.report.grid import png_bytes

    attr = _attributions(ctx, batch, pred)
    shown = batch["x"].detach().float().cpu()
    stats = ctx.info.get("normalize")
    if isinstance(stats, dict):  # back to [0, 1] for display
        shape = (1, -1, 1, 1)
        shown = shown * torch.tensor(stats["std"]).view(shape) + torch.tensor(stats["mean"]).view(shape)
    panels = heatmap(shown, attr)  # (2N, 3, H', W'): each image, then its attribution
    return [(png_img(png_bytes(panels[2 * i:2 * i + 2], nrow=2), "example and its attribution", "pixels"), "")
            for i in range(len(attr))]


def show_row(ctx: Context, batch: dict, pred: torch.Tensor) -> list[tuple[str, str]]:
    """A table row's five features with the largest attributions."""
    attr = _attributions(ctx, batch, pred).flatten(1)
    names = ctx.info.get("feature_names") or [f"feature {j}" for j in range(attr.shape[1])]
    out = []
    for a in attr:
        top = a.abs().argsort(descending=True)[:5].tolist()
        rows = "".join(f"<tr><td>{esc(names[j] if j < len(names) else j)}</td><td class=num>{float(a[j]):+.3f}</td></tr>"
                       for j in top)
        out.append((f"<table>{rows}</table>", ""))
    return out


def show_text(ctx: Context, batch: dict, pred: torch.Tensor) -> list[tuple[str, str]]:
    """A sentence as its tokens, each coloured by its attribution (red raised the predicted class)."""
    from strata.data.tokenizers import load_tokenizer
    from strata.explain.text import pieces, tokens_html

    attr = _attributions(ctx, batch, pred)  # (B, T)
    x, (lengths, *_) = ctx.run.task.explain_args(batch)
    tok = load_tokenizer(ctx.folder.path)
    out = []
    for row, n, a in zip(x.cpu(), lengths.cpu(), attr):
        tokens = [{"token": t, "attribution": float(v)} for t, v in zip(pieces(tok, row[:int(n)].tolist()), a)]
        out.append((f'<p class="sentence">{tokens_html(tokens)}</p>', ""))
    return out


def show_plain(ctx: Context, batch: dict, pred: torch.Tensor) -> list[tuple[str, str]]:
    """Inputs with no picture of their own here (audio frames, time series): the figures only."""
    return [("", "") for _ in range(len(pred))]


# How a top-loss example is shown, by the kind of input the run reads.
SHOW: dict = {"image": show_image, "table": show_row, "text": show_text}


@guarded("Feature hierarchy")
def feature_hierarchy(ctx: Context) -> list[Section]:
    """What the convolutional layers learned, early to late (`strata features`): filters, activation maps,
    the patches that excite units most, and a linear probe's accuracy per layer."""
    if ctx.info.get("kind") != "image" or not any(isinstance(m, torch.nn.Conv2d) for m in ctx.run.task.modules()):
        return []
    if importlib.util.find_spec("strata.explain.features") is None:
        return []
    from strata.explain.features import features_run

    found = features_run(ctx.run, out=ctx.png("features"), probe_examples=PROBE_EXAMPLES,
                         patch_examples=PATCH_EXAMPLES, device=str(ctx.device))
    figures = [figure(png_file(p, Path(p).stem.replace("_", " ")), esc(Path(p).stem.replace("_", " ")))
               for p in _pngs(found)]
    if not figures:
        return []
    return [Section("Feature hierarchy", '<p class="muted">Early layers respond to edges and strokes, later ones to '
                                         "parts of the shapes; the probe shows how linearly separable the classes "
                                         f"are after each layer. <code>strata features {esc(ctx.folder.path)}</code> "
                                         f'draws them larger.</p><div class="gallery">{"".join(figures)}</div>')]


def _pngs(found) -> list[Path]:
    """Every PNG path in features_run's answer (values may be paths, lists of them or nested dicts)."""
    if isinstance(found, (str, Path)):
        return [Path(found)] if str(found).endswith(".png") and Path(found).is_file() else []
    if isinstance(found, dict):
        found = list(found.values())
    if isinstance(found, (list, tuple)):
        return [p for v in found for p in _pngs(v)]
    return []


# --- regression ------------------------------------------------------------------------------------
@guarded("Predicted vs true")
def regression(ctx: Context) -> list[Section]:
    from strata.report.plots import predicted_vs_true

    split = ctx.split[0]
    p, y = ctx.outputs(lambda task, batch: task(batch["x"]))
    y = y.float().reshape(len(y), -1)
    target = ctx.info.get("target") or "target"
    name = target if isinstance(target, str) else ", ".join(map(str, target))
    path = predicted_vs_true(y[:, 0].numpy(), p[:, 0].numpy(), ctx.png("regression.png"), name)
    rmse = float((p - y).pow(2).mean().sqrt())
    return [Section("Predicted vs true", f'<p class="muted">{len(y):,} {split} examples; RMSE {rmse:.4g}'
                                         + (" (first output shown)" if p.shape[1] > 1 else "") + "</p>"
                    + figure(png_file(path, "predicted vs true and residuals")))]


# --- autoencoders ----------------------------------------------------------------------------------
@guarded("Reconstructions")
def reconstructions(ctx: Context) -> list[Section]:
    """Test images above their reconstructions, and the anomaly scores against the alarm threshold."""
    from strata.report.grid import png_bytes
    from strata.report.plots import score_histogram

    task = ctx.run.task.eval()
    split, _, idx = ctx.split
    scores, labels, body = [], [], ""
    with torch.no_grad():
        for batch in ctx.batches(idx):
            x = batch["x"]
            out = task.model(x)
            scores.append(task.scores(x, out).float().cpu())
            flags = task.anomaly_labels(batch)
            labels.append(None if flags is None else flags.cpu())
            if not body and ctx.info.get("kind") == "image":
                n = min(8, len(x))
                pair = torch.cat([x[:n].float().cpu(), task.reconstruction(out[:n]).float().cpu()])
                body = figure(png_img(png_bytes(pair, nrow=n), "test images and their reconstructions", "pixels",
                                      scale=3), f"{n} {split} images (top) and their reconstructions (bottom)")
    anomalous = None if any(v is None for v in labels) else torch.cat(labels).numpy()
    threshold = float(task.threshold)
    path = score_histogram(torch.cat(scores).numpy(), anomalous, threshold, ctx.png("scores.png"))
    return [Section("Reconstructions", body + figure(png_file(path, "anomaly scores"),
                                                     f"anomaly scores of {len(idx):,} {split} examples"
                                                     + ("" if threshold == threshold else "; no threshold chosen "
                                                        "yet (it is set at validation)")))]


# --- generators ------------------------------------------------------------------------------------
JUDGED = ("frechet", "share_min", "share_max", "recognised", "recognised_min_class")


@guarded("Samples")
def samples(ctx: Context) -> list[Section]:
    """A seeded grid of samples, the same on every report of this run."""
    k = len(ctx.info.get("class_names") or ()) if getattr(ctx.run.task, "conditional", False) else 0
    n = k * max(1, SAMPLES // k) if k else SAMPLES  # a conditional grid: whole rows of one sample per class
    out = ctx.run.task.generate({"n": n, "seed": 0, "out": str(ctx.png("samples.png"))}, ctx.folder.path)
    what = "one column per class" if "classes" in out else "seed 0"
    return [Section("Samples", figure(png_file(out["out"], "generated samples", "pixels", scale=2),
                                      f"{out['n']} samples ({what}); <code>strata generate {esc(ctx.folder.path)} "
                                      "--n 64 --seed 1</code> draws others"))]


def judged(ctx: Context) -> list[Section]:
    """The judge's figures (Frechet distance, class shares) if the run recorded them; the report never
    trains or runs a judge itself."""
    found = {k: v for k, v in ctx.summary.items() if k.rsplit("/", 1)[-1] in JUDGED}
    if not found:
        vals = [e for e in ctx.events if e.get("event") == "val" and any(k.rsplit("/", 1)[-1] in JUDGED for k in e)]
        found = {k: v for k, v in (vals[-1] if vals else {}).items() if k.rsplit("/", 1)[-1] in JUDGED}
    if not found:
        return [Section("Judged figures", note("This run recorded no judged figures (Frechet distance, class "
                                               f"shares). `strata evaluate {ctx.folder.path}` computes them with "
                                               "the judge classifier."))]
    return [Section("Judged figures", table(["figure", "value"], [[k, v] for k, v in sorted(found.items())],
                                            "judged"))]


# --- text ------------------------------------------------------------------------------------------
@guarded("Samples")
def language_samples(ctx: Context) -> list[Section]:
    out = ctx.run.task.generate({"prompt": "", "max_new_tokens": LM_TOKENS, "seed": 0, "n": LM_SAMPLES},
                                ctx.folder.path)
    texts = out.get("samples") or [out["text"]]
    body = "".join(f'<pre class="sample">{esc(t)}</pre>' for t in texts)
    return [Section("Samples", f'<p class="muted">{len(texts)} samples of {LM_TOKENS} tokens, seed 0, temperature '
                               f"{number(out['temperature'])}; <code>strata generate {esc(ctx.folder.path)} --prompt "
                               "...</code> continues your text.</p>" + body)]


@guarded("Translations")
def translations(ctx: Context) -> list[Section]:
    from strata.tasks.seq2seq import trim

    task = ctx.run.task.eval()
    split, _, idx = ctx.split
    batch = next(ctx.batches(idx[:TRANSLATIONS]))
    src_tok, tgt_tok = task.tokenizers()
    src, sl, tgt, tl = trim(batch)
    hyps = [r["translation"] for r in task.predict_step(batch)]
    rows = [[src_tok.decode(s[:int(n)].tolist()), tgt_tok.decode(t[1:int(m) - 1].tolist()), h]
            for s, n, t, m, h in zip(src.cpu(), sl.cpu(), tgt.cpu(), tl.cpu(), hyps)]
    return [Section("Translations", f'<p class="muted">The first {len(rows)} {split} sentences (beam search).</p>'
                    + table(["source", "reference", "translation"], rows, "translation-table", numeric_from=9))]


# --- recommenders ----------------------------------------------------------------------------------
@guarded("Recommendations")
def recommendations(ctx: Context) -> list[Section]:
    users = ctx.info.get("user_ids") or []
    parts = []
    for n, user in enumerate(users[1:4], 1):  # index 0 is the unknown user
        out = ctx.run.task.recommend({"user": user, "top": 5}, ctx.folder.path)
        key = "rating" if out["top"] and "rating" in out["top"][0] else "score"
        parts.append(f"<h3>user {esc(user)}</h3>" + table(["item", "title", key],
                                                          [[r["item"], r.get("title", ""), r.get(key, "")]
                                                           for r in out["top"]], f"recommendations-{n}", 2))
    return [Section("Recommendations", '<p class="muted">The top 5 items each of the first users has not rated.</p>'
                    + "".join(parts))] if parts else []


# What each task adds to the page, after the test metrics and curves.
TASK_SECTIONS: dict[str, list[Callable[[Context], list[Section]]]] = {
    "classify": [classifier, feature_hierarchy],
    "semi_supervised": [classifier, feature_hierarchy],
    "sequence_classify": [classifier],
    "regress": [regression],
    "reconstruct": [reconstructions],
    "gan": [samples, judged],
    "diffusion": [samples, judged],
    "vae": [samples, judged],
    "language_model": [language_samples],
    "seq2seq": [translations],
    "rating": [recommendations],
    "ranking": [recommendations],
}


def build(folder: RunFolder, device: str | None) -> tuple[str, list[tuple[str, str]], list[Section]]:
    """(title, header facts, sections) of a run's report."""
    ctx = Context(folder, device)
    try:
        if ctx.has_weights:
            try:
                ctx.run
            except StrataError as e:
                ctx.has_weights, ctx.load_error = False, str(e)
        title, facts = header(ctx)
        sections = status(ctx) + metrics(ctx) + curves(ctx)
        if ctx.has_weights:
            for fn in TASK_SECTIONS.get(ctx.task_name, ()):
                sections += fn(ctx)
        return title, facts, sections + config(ctx)
    finally:
        ctx.close()
