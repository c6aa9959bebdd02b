"""Attributions through Captum on a CNN trained on real digits: integrated gradients equals the
hand-written reference it replaced and sums to f(x) - f(baseline) (completeness), the pixels each
method ranks first matter far more to the prediction than random ink pixels (deletion), Grad-CAM
lights a digit's strokes, not the empty border; `strata explain` draws the heatmap and lists table
features, and bad requests are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from strata.api import train
from strata.cli import main
from strata.config import DataConfig
from strata.data import load_data
from strata.errors import StrataError
from strata.explain.attributions import METHODS, attribute, last_conv


def reference_integrated_gradients(fn, x, target, baseline=None, steps=32):
    """The hand-written integrated gradients strata used before Captum (midpoint rule), kept as the reference."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)

    def grad(z):
        z = z.detach().requires_grad_(True)
        score = fn(z).float().gather(1, target[:, None])[:, 0]
        (g,) = torch.autograd.grad(score.sum(), z)
        return g, score.detach()

    total = torch.zeros_like(x)
    for k in range(steps):
        total += grad(baseline + (k + 0.5) / steps * (x - baseline))[0]
    attr = (x - baseline) * total / steps
    return attr, grad(x)[1] - grad(baseline)[1] - attr.flatten(1).sum(1)


def explain(task, method, x, t, steps=32):
    return attribute(method, task.explain_scores, x, t, steps=steps,
                     layer=last_conv(task) if method == "grad_cam" else None)


def test_captum_integrated_gradients_equal_the_hand_written_ones(digits_run, test_digits):
    task, x = digits_run.task.eval(), test_digits[:20]
    t = task.explain_scores(x).argmax(1)
    attr, gap = explain(task, "integrated_gradients", x, t, steps=16)
    ref, ref_gap = reference_integrated_gradients(task.explain_scores, x, t, steps=16)
    torch.testing.assert_close(attr, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gap, ref_gap, rtol=0, atol=1e-5)


def test_integrated_gradients_is_complete(digits_run, test_digits):
    task, x = digits_run.task.eval(), test_digits
    with torch.no_grad():
        t = task.explain_scores(x).argmax(1)
        f = task.explain_scores(x).gather(1, t[:, None])[:, 0]
        f0 = task.explain_scores(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    attr, gap = explain(task, "integrated_gradients", x, t, steps=64)
    torch.testing.assert_close(gap, f - f0 - attr.flatten(1).sum(1), rtol=1e-4, atol=1e-4)
    rel = gap.abs() / (f - f0).abs()
    assert rel.mean() < 0.01 and rel.max() < 0.05, (rel.mean(), rel.max())  # measured 0.0016 and 0.008
    assert (attr[x == 0] == 0).all()  # black pixels equal the black baseline: no attribution


# Mean drop of the predicted class's probability when 4 of 64 pixels are blanked (measured): the 4
# ranked first by the method vs 4 random ink pixels (0.14). Saliency and Grad-CAM rank by magnitude
# and place some of their top pixels on the black ground, where blanking removes nothing, so only ink
# pixels are ranked for them.
DELETION = {"integrated_gradients": 0.65, "gradient_x_input": 0.66, "occlusion": 0.71, "saliency": 0.38,
            "grad_cam": 0.25}


@pytest.mark.parametrize("method", METHODS)
def test_the_top_attributed_pixels_carry_the_prediction(digits_run, test_digits, method):
    task, x = digits_run.task.eval(), test_digits
    with torch.no_grad():
        p = task.explain_scores(x).softmax(1)
    t = p.argmax(1)
    attr, _ = explain(task, method, x, t)
    assert attr.shape == x.shape

    def prob_after_blanking(index):
        xd = x.flatten(1).clone()
        xd.scatter_(1, index, 0.0)
        with torch.no_grad():
            return task.explain_scores(xd.view_as(x)).softmax(1).gather(1, t[:, None])[:, 0]

    g = torch.Generator().manual_seed(0)
    rand = torch.stack([(row > 0).nonzero()[:, 0][torch.randperm(int((row > 0).sum()), generator=g)[:4]]
                        for row in x.flatten(1)])
    ranked = attr.flatten(1).masked_fill(x.flatten(1) == 0, float("-inf"))
    p0 = p.gather(1, t[:, None])[:, 0]
    drop_top = float((p0 - prob_after_blanking(ranked.topk(4, 1).indices)).mean())
    drop_rand = float((p0 - prob_after_blanking(rand)).mean())
    if method in ("saliency", "grad_cam"):
        assert drop_top > 1.5 * drop_rand, (drop_top, drop_rand)
    else:
        assert drop_top > 0.4 and drop_top > 3 * drop_rand, (drop_top, drop_rand)


def test_gradient_x_input_and_occlusion_give_nothing_to_black_pixels_and_saliency_is_unsigned(digits_run,
                                                                                             test_digits):
    task, x = digits_run.task.eval(), test_digits[:10]
    t = task.explain_scores(x).argmax(1)
    for method in ("gradient_x_input", "occlusion"):  # the black pixels equal the baseline: nothing to remove
        attr, gap = explain(task, method, x, t)
        assert gap is None and (attr[x == 0] == 0).all(), method
    sal, _ = explain(task, "saliency", x, t)
    assert (sal >= 0).all() and (sal[x == 0] > 0).any()  # sensitivity exists off the ink too


def test_grad_cam_lights_the_strokes_not_the_empty_border(mnist_run):
    """On 50 MNIST test digits, a 1-epoch CNN's Grad-CAM (at its last convolution, 7x7 upsampled to
    28x28) averages 0.39 of its maximum over ink pixels and 0.03 over the empty pixels of the 4-pixel
    frame (measured); every digit's map is higher over its strokes."""
    task = mnist_run.task.eval()
    x = load_data(DataConfig(name="mnist", limit=2000)).test.tensors["x"][:50]  # (50, 1, 28, 28) in [0, 1]
    t = task.explain_scores(x).argmax(1)
    cam, gap = explain(task, "grad_cam", x, t)
    assert gap is None and cam.shape == x.shape and (cam >= 0).all()
    cam = cam / cam.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    ink = (x > 0.3).float()
    border = torch.ones_like(x)
    border[..., 4:-4, 4:-4] = 0
    border *= (x == 0).float()  # the empty part of the 4-pixel frame (a few strokes reach into it)
    on_ink = (cam * ink).flatten(1).sum(1) / ink.flatten(1).sum(1)
    on_border = (cam * border).flatten(1).sum(1) / border.flatten(1).sum(1)
    assert (on_ink > on_border).all() and on_ink.mean() > 5 * on_border.mean(), (on_ink.mean(), on_border.mean())


def test_cli_draws_a_heatmap_for_image_inputs(digits_run, test_digits, tmp_path, capsys):
    from PIL import Image

    from strata.report.grid import save_images

    paths = save_images(test_digits[:3], tmp_path / "in")
    out = tmp_path / "heat.png"
    assert main(["explain", str(digits_run.run_dir), *map(str, paths), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["explanations"]
    assert [r["input"] for r in res] == list(map(str, paths))
    assert all(r["target"] in [str(i) for i in range(10)] and abs(r["completeness_gap"]) < 0.1 for r in res)
    w, h = Image.open(out).size
    assert (w, h) == (2 * 112 + 3 * 2, 3 * 112 + 4 * 2)  # rows of (input, heatmap), enlarged 14x
    for method in ("gradient_x_input", "saliency", "occlusion", "grad_cam"):
        assert main(["explain", str(digits_run.run_dir), str(paths[0]), "--target", "7", "--method", method,
                     "--out", str(out)]) == 0
        assert ": 7 (score" in capsys.readouterr().out and Image.open(out).size == (2 * 112 + 3 * 2, 112 + 2 * 2)


@pytest.mark.parametrize("args,message", [
    (["--method", "lime"], "--method must be one of integrated_gradients, gradient_x_input, saliency, occlusion, "
                           "grad_cam, got 'lime'"),
    (["--method", "attention"], "--method attention does not apply to image inputs; for this run use one of "
                                "integrated_gradients"),
    (["--target", "12"], "--target must be a score index 0..9 or a name (0, 1, 2"),
    (["--target", "-1"], "--target must be a score index 0..9"),
    (["--target", "seven"], "--target must be a score index 0..9"),
    (["--steps", "0"], "--steps must be"),
])
def test_cli_bad_requests_exit_2(digits_run, test_digits, tmp_path, capsys, args, message):
    from strata.report.grid import save_images

    (path,) = save_images(test_digits[:1], tmp_path / "in")
    try:
        code = main(["explain", str(digits_run.run_dir), str(path), *args])
    except SystemExit as e:  # argparse's own checks exit the same way
        code = e.code
    assert code == 2 and message in capsys.readouterr().err


def test_tasks_without_scores_say_so():
    from strata.build import build_config
    from strata.tasks import build_task

    cfg = build_config({"data": {"name": "mnist"}, "model": {"name": "unet", "base_channels": 16},
                        "task": {"name": "diffusion"}})
    task = build_task(cfg, {"in_shape": [1, 28, 28], "num_classes": 10, "normalize": None})
    with pytest.raises(StrataError, match="attributes the outputs of classify, sequence_classify, language_model, regress and reconstruct runs"):
        task.explain_scores(torch.zeros(1, 1, 28, 28))


def test_table_rows_list_their_top_features(tmp_path, capsys):
    """On scikit-learn's diabetes table, averaged over patients, bmi and s5 (the two strongest
    predictors of a linear fit) lead the integrated-gradients ranking of a regression MLP."""
    from sklearn.datasets import load_diabetes

    torch.set_num_threads(1)
    d = load_diabetes(scaled=False)
    path = tmp_path / "diabetes.csv"
    rows = [",".join(d.feature_names + ["progression"])]
    rows += [",".join(f"{v:.6g}" for v in (*x, y)) for x, y in zip(d.data, d.target)]
    path.write_text("\n".join(rows) + "\n")
    res = train({"name": "diabetes", "data": {"name": "csv", "path": str(path), "target": "progression"},
                 "model": {"name": "mlp", "hidden": [32]}, "task": {"name": "regress"},
                 "optimizer": {"name": "adamw", "lr": 0.01}, "trainer": {"max_epochs": 30, "progress": "off"}},
                run_dir=tmp_path / "run")
    x = load_data(DataConfig(name="csv", options={"path": str(path), "target": "progression"})).train.tensors["x"]
    attr, _ = attribute("integrated_gradients", res.task.eval().explain_scores, x, torch.zeros(len(x), dtype=torch.long))
    names = res.task.info["feature_names"]
    ranked = [names[i] for i in attr.abs().mean(0).argsort(descending=True).tolist()]
    assert {"bmi", "s5"} <= set(ranked[:3]), ranked
    inline = ",".join(f"{k}={v}" for k, v in zip(d.feature_names, np.asarray(d.data[0])))
    assert main(["explain", str(res.run_dir), inline, "--top", "3", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["explanations"]
    assert r["target"] == "output 0" and len(r["top"]) == 3 and all(f["feature"] in names for f in r["top"])
    assert abs(r["completeness_gap"]) < 0.05 * abs(r["score"])
    two = tmp_path / "two.csv"
    two.write_text("\n".join(rows[:3]) + "\n")  # a file of two patients: one explanation each
    assert main(["explain", str(res.run_dir), str(two), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("row 1: output 0") == 1 and out.count("row 2: output 0") == 1
    assert main(["explain", str(res.run_dir), inline, "--method", "occlusion", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["explanations"]
    assert r["method"] == "occlusion" and len(r["top"]) == 10 and "completeness_gap" not in r
    assert main(["explain", str(res.run_dir), inline, "--method", "grad_cam"]) == 2  # images only: says which apply
    assert ("--method grad_cam does not apply to table inputs; for this run use one of integrated_gradients, "
            "gradient_x_input, saliency, occlusion") in capsys.readouterr().err
    assert main(["explain", str(res.run_dir), inline, "--target", "1"]) == 2  # one output: index 0 only
    assert "--target must be a score index 0..0 or a name (output 0), got '1'" in capsys.readouterr().err


def test_recordings_are_explained_per_frame_and_channel(mirror, tmp_path, capsys):
    """A GRU on 200 spoken digits (FSDD), one epoch: each method attributes the class score to the
    recording's feature frames (lengths passed through Captum with the frames), integrated gradients
    to within 1e-3 of f(x) - f(silence as zeros), and padding frames of the shorter recording get none."""
    from strata.data import DATASETS

    torch.set_num_threads(1)
    res = train({"name": "fsdd", "data": {"name": "fsdd", "batch_size": 32, "limit": 200, "hop_ms": 20.0,
                                          "val_fraction": 0.05},
                 "model": {"name": "rnn_classifier", "cell": "gru", "hidden": 16, "embed_dim": 0, "pool": "mean"},
                 "task": {"name": "sequence_classify"}, "trainer": {"max_epochs": 1, "progress": "off",
                                                                    "device": "cpu"}},
                run_dir=tmp_path / "fsdd")
    spec = DATASETS.get("fsdd")
    wavs = [str(p) for p in spec.recordings() if p.name.startswith("7_")][:2]
    batch = spec.encode_inputs(wavs, res.task.info, res.run_dir)
    lengths = batch["lengths"].tolist()
    for method in ("integrated_gradients", "gradient_x_input", "saliency", "occlusion"):
        assert main(["explain", str(res.run_dir), *wavs, "--method", method, "--top", "5", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)["explanations"]
        assert [r["input"] for r in out] == wavs and all(len(r["top"]) == 5 for r in out)
        for r, n in zip(out, lengths):
            frames = [int(f["feature"].split(",")[0].removeprefix("frame ")) for f in r["top"]]
            assert all(f["feature"].startswith("frame ") and ", channel " in f["feature"] for f in r["top"])
            assert max(frames) < n  # nothing from the padding after a shorter recording
            if method == "integrated_gradients":
                assert abs(r["completeness_gap"]) < 1e-3, r
    assert main(["explain", str(res.run_dir), wavs[0], "--method", "grad_cam"]) == 2
    assert "does not apply to audio inputs" in capsys.readouterr().err
