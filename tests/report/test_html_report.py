"""`strata report`: what the page of a run holds, checked against the run itself.

A small CNN trained on scikit-learn's digits by `strata train` (which writes the report): its confusion
matrix and per-class precision / recall are recomputed here with scikit-learn from the run's own
predictions and must equal the page's tables; its top losses are the highest cross-entropies, sorted,
each with its picture. A language model's page holds generated text, a GAN's a grid of samples.
Bad inputs exit 2 with one line; a report that fails never fails the training that ran before it."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from strata.report.html import is_report, write_report
from strata.report.sections import MAX_EXAMPLES, TOP_LOSSES


class Page(HTMLParser):
    """The parts of a report the tests read: tables by id (cell texts), headings, images and the
    top-loss figures' data-loss values."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headings: list[str] = []
        self.images: list[str] = []
        self.losses: list[float] = []
        self._table = self._row = self._cell = self._heading = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"table-{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "h2":
            self._heading = []
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "figure" and "data-loss" in a:
            self.losses.append(float(a["data-loss"]))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None
        elif tag == "h2":
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def read(path) -> tuple[str, Page]:
    text = Path(path).read_text(encoding="utf-8")
    return text, Page(text)


def decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:60]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def no_network(text: str) -> None:
    """Self-contained: no URL of any scheme a browser would fetch."""
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|\burl\(", text, re.I)
    assert not re.search(r"<(script|link|iframe)\b", text, re.I)


@pytest.fixture(scope="module")
def truth(digits_run):
    """The run's own test predictions and losses, recomputed outside the report."""
    import strata
    from strata.data import load_data

    run = strata.load(digits_run)
    test = load_data(run.cfg.data).test
    assert len(test) <= MAX_EXAMPLES  # so the page covers every test example
    x, y = test.tensors["x"], test.tensors["y"]
    with torch.no_grad():
        logits = run.task.model(x).float()
    return {"y": y.numpy(), "pred": logits.argmax(1).numpy(), "loss": F.cross_entropy(logits, y, reduction="none"),
            "names": run.task.class_names}


# --- a classifier's page -------------------------------------------------------------------------------
def test_train_writes_a_report_with_config_curves_and_metrics(digits_run):
    text, page = read(digits_run / "report.html")
    assert is_report(digits_run / "report.html")
    for heading in ("Test metrics", "Learning curves", "Confusion matrix", "Per-class precision and recall",
                    "Top losses", "Feature hierarchy", "Config"):
        assert heading in page.headings
    config = html.unescape(text[text.index('<section id="config">'):])
    assert 'name = "digits-cnn"' in config and "[optimizer]" in config and "fc_hidden = 32" in config
    summary = json.loads((digits_run / "summary.json").read_text())
    metrics = {r[0]: float(r[1]) for r in page.tables["metrics"][1:]}
    assert metrics["test/acc"] == pytest.approx(summary["test/acc"], abs=5e-4)
    assert metrics["test/loss"] == pytest.approx(summary["test/loss"], rel=1e-3)
    curves = decode(page.images[0])  # the learning curves come first
    assert curves.width > 400 and curves.height > 150
    for src in page.images:
        decode(src).load()  # every image is a whole PNG
    no_network(text)


def test_confusion_matrix_and_per_class_figures_equal_sklearn(digits_run, truth):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    _, page = read(digits_run / "report.html")
    k = len(truth["names"])
    rows = page.tables["confusion"]
    assert rows[0][1:] == truth["names"]
    shown = np.array([[int(c) for c in r[1:]] for r in rows[1:]])
    assert shown.sum() == len(truth["y"])  # every test example, once
    assert (shown == confusion_matrix(truth["y"], truth["pred"], labels=list(range(k)))).all()
    p, r, f1, support = precision_recall_fscore_support(truth["y"], truth["pred"], labels=list(range(k)),
                                                        zero_division=0)
    table = page.tables["per-class"]
    assert table[0] == ["class", "precision", "recall", "F1", "support"]
    for i, row in enumerate(table[1:k + 1]):
        assert row[0] == truth["names"][i]
        assert [float(v) for v in row[1:4]] == pytest.approx([p[i], r[i], f1[i]], abs=5e-4)
        assert int(row[4].replace(",", "")) == support[i]
    assert (np.diag(shown).sum() / shown.sum()) < 1  # a 2-epoch CNN still errs: there are top losses to show


def test_top_losses_are_the_highest_losses_sorted_with_their_pictures(digits_run, truth):
    text, page = read(digits_run / "report.html")
    expected = truth["loss"].sort(descending=True).values[:TOP_LOSSES].tolist()
    assert page.losses == sorted(page.losses, reverse=True)
    assert page.losses == pytest.approx(expected, rel=1e-3, abs=1e-4)
    gallery = text[text.index('id="top-loss-examples"'):]
    pictures = re.findall(r'<figure class="top-loss"[^>]*><img[^>]*src="([^"]+)"', gallery)
    assert len(pictures) == TOP_LOSSES
    for src in pictures:
        im = decode(src)
        assert im.width > 2 * im.height * 0.9  # the digit, then its attribution heatmap beside it
        arr = np.asarray(im.convert("RGB")).astype(int)
        assert (arr[..., 0] != arr[..., 2]).any()  # the heatmap is coloured (red / blue), not grey
    captions = re.findall(r"<b>true (\w+)</b>, predicted (\w+)", gallery)
    assert len(captions) == TOP_LOSSES and all(t != p for t, p in captions[:1])  # the worst one is wrong


# --- other run kinds -----------------------------------------------------------------------------------
def test_language_model_report_holds_generated_text(lm_run):
    text, page = read(lm_run / "report.html")
    assert "Samples" in page.headings and "Confusion matrix" not in page.headings
    samples = re.findall(r'<pre class="sample">(.*?)</pre>', text, re.S)
    assert len(samples) == 3 and all(len(s) >= 100 for s in samples)
    assert len(set(samples)) == 3  # three different draws
    no_network(text)


def test_gan_report_holds_a_sample_grid(gan_run):
    text, page = read(gan_run / "report.html")
    assert "Samples" in page.headings and "Judged figures" in page.headings
    assert "strata evaluate" in text  # no judged figures recorded: the page says how to get them
    grid = decode(page.images[-1])
    assert grid.size == (10 * 30 + 2, 6 * 30 + 2)  # 6 rows of one 28x28 sample per class, 2 px apart
    assert "60 samples (one column per class)" in text
    arr = np.asarray(grid.convert("L"))
    assert (arr[:2] == 255).all() and (arr[:, :2] == 255).all()  # white padding around
    cells = arr[2:].reshape(6, 30, -1)[:, :28, 2:].reshape(6, 28, 10, 30)[..., :28]  # (row, y, class, x)
    assert (cells != 255).any(axis=(1, 3)).all()  # every cell holds a drawn sample (3 steps: still faint)
    no_network(text)


def test_text_classifier_top_losses_colour_each_token(mirrored_run):
    text, page = read(mirrored_run("sst2") / "report.html")
    assert {"Confusion matrix", "Per-class precision and recall", "Top losses"} <= set(page.headings)
    assert page.losses == sorted(page.losses, reverse=True) and len(page.losses) == TOP_LOSSES
    sentences = re.findall(r'<p class="sentence">(.*?)</p>', text, re.S)
    assert len(sentences) == TOP_LOSSES
    for sentence in sentences:
        spans = re.findall(r'<span class="token" style="background:rgb\((\d+),(\d+),(\d+)\)" title="([-+.\d]+)">',
                           sentence)
        assert len(spans) >= 2  # a token each, with its attribution
        assert any(c != ("255", "255", "255") for *c, _ in spans)  # and coloured by it
    no_network(text)


def test_regression_shows_predicted_vs_true_with_the_test_rmse(diabetes_run):
    text, page = read(diabetes_run / "report.html")
    summary = json.loads((diabetes_run / "summary.json").read_text())
    assert "Predicted vs true" in page.headings
    rmse = float(re.search(r"test examples; RMSE ([\d.]+)", text).group(1))
    assert rmse == pytest.approx(summary["test/rmse"], rel=1e-3)  # every test example, in the target's units
    assert decode(page.images[-1]).width > 600  # the scatter and the residuals side by side


def test_translation_and_recommendation_reports(mirrored_run):
    text, page = read(mirrored_run("eng_fra") / "report.html")
    rows = page.tables["translation-table"]
    assert rows[0] == ["source", "reference", "translation"] and len(rows) == 9
    assert all(r[0] and r[1] for r in rows[1:])  # English sentences and their French references
    run = mirrored_run("movielens")
    text, page = read(run / "report.html")
    assert "Recommendations" in page.headings
    info = json.loads((run / "info.json").read_text())
    from strata.data.ratings import rated_by_user

    rated = rated_by_user(info)
    for u in (1, 2, 3):  # the first users: 5 items each that they have not rated
        items = [r[0] for r in page.tables[f"recommendations-{u}"][1:]]
        assert len(items) == 5 and not set(items) & {info["item_ids"][i] for i in rated[u]}


def test_autoencoder_report_shows_reconstructions_and_anomaly_scores(mirrored_run):
    text, page = read(mirrored_run("autoencoder") / "report.html")
    assert "Reconstructions" in page.headings
    section = text[text.index('<section id="reconstructions">'):]
    pair, scores = [decode(src) for src in re.findall(r'<img[^>]*src="([^"]+)"', section)[:2]]
    assert pair.size == (8 * 30 + 2, 2 * 30 + 2)  # 8 test digits above their 8 reconstructions
    assert scores.width > 400 and "anomaly scores of" in section
    no_network(text)


def test_a_run_without_a_checkpoint_gets_a_report_of_what_it_has(digits_run, tmp_path):
    """A run stopped before its first save: config, curves and metrics, and a note saying what is missing."""
    run = tmp_path / "early"
    run.mkdir()
    for name in ("config.toml", "info.json", "metrics.jsonl"):
        shutil.copy(digits_run / name, run / name)
    out = write_report(run)
    text, page = read(out["out"])
    assert "has no checkpoint" in text and "has not finished" in text
    assert {"Status", "Learning curves", "Test metrics", "Config"} <= set(page.headings)
    assert "Confusion matrix" not in page.headings


def test_a_checkpoint_that_does_not_load_is_said_not_fatal(digits_run, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(digits_run, run)
    for manifest in run.glob("checkpoints/*/manifest.json"):
        manifest.write_text("{not json")
    with pytest.warns(UserWarning, match="is corrupt"):  # best does not load: last is tried, and fails too
        text, page = read(write_report(run, device="cpu")["out"])
    assert "The checkpoint did not load" in text and "manifest.json" in text
    assert {"Status", "Learning curves", "Test metrics", "Config"} <= set(page.headings)


# --- the command ---------------------------------------------------------------------------------------
def test_report_command_out_json_and_overwrite_rules(digits_run, tmp_path, cli):
    out = tmp_path / "x.html"
    code, stdout, err = cli("report", digits_run, "--out", out, "--json", "--device", "cpu")
    assert code == 0, err
    answer = json.loads(stdout)
    assert answer["out"] == str(out) and out.is_file() and "Confusion matrix" in answer["sections"]
    assert answer["seconds"] < 60
    code, _, err = cli("report", digits_run, "--out", out, "--device", "cpu")  # its own report: replaced
    assert code == 0, err
    mine = tmp_path / "mine.html"
    mine.write_text("<html>my page</html>")
    code, _, err = cli("report", digits_run, "--out", mine)
    assert code == 2 and "is not a strata report" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "<html>my page</html>"


@pytest.mark.parametrize("case, message", [
    ("not-a-run", "is not a strata run folder"),
    ("missing", "does not exist"),
    ("out-folder-missing", "does not exist; create it first"),
    ("out-is-a-folder", "is a folder"),
])
def test_bad_inputs_exit_2_with_one_line(digits_run, tmp_path, case, message, cli):
    args = {"not-a-run": [tmp_path], "missing": [tmp_path / "nope"],
            "out-folder-missing": [digits_run, "--out", tmp_path / "no" / "r.html"],
            "out-is-a-folder": [digits_run, "--out", tmp_path]}[case]
    code, stdout, err = cli("report", *args)
    assert code == 2 and stdout == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_no_report_opt_out_and_a_failing_report_never_fails_training(tmp_path, monkeypatch, cli, config_file, digits_config):
    mlp = {**digits_config, "model": {"name": "mlp", "hidden": [16]},
           "trainer": {"max_epochs": 1, "progress": "off"}}
    config = config_file(tmp_path / "mlp.toml", mlp)
    code, _, err = cli("train", config, "--run-dir", tmp_path / "quiet", "--no-report", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "quiet" / "summary.json").is_file() and not (tmp_path / "quiet" / "report.html").exists()

    import strata.report.sections

    def broken(*a, **k):
        raise RuntimeError("a bug in a section")

    monkeypatch.setattr(strata.report.sections, "build", broken)
    with pytest.warns(UserWarning, match="its report could not be written.*a bug in a section"):
        code, _, err = cli("train", config, "--run-dir", tmp_path / "loud", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "loud" / "summary.json").is_file() and not (tmp_path / "loud" / "report.html").exists()
