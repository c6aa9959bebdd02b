"""Attributions on a CNN trained on real digits: integrated gradients sums to f(x) - f(baseline)
(completeness), the pixels it ranks first matter far more to the prediction than random ink pixels
(deletion), `strata explain` draws the heatmap and lists table features, and bad requests are clear
errors."""

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
from strata.explain.attributions import gradient_x_input, integrated_gradients


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    torch.set_num_threads(1)
    return train({"name": "explain-digits", "data": {"name": "digits", "batch_size": 32}, "model": {"name": "cnn"},
                  "task": {"name": "classify"}, "trainer": {"max_epochs": 5, "progress": "off", "seed": 0}},
                 run_dir=tmp_path_factory.mktemp("runs") / "digits")


@pytest.fixture(scope="module")
def test_digits():
    return load_data(DataConfig(name="digits")).test.tensors["x"][:100]  # (100, 1, 8, 8) in [0, 1]


def test_integrated_gradients_is_complete(digits_run, test_digits):
    task, x = digits_run.task.eval(), test_digits
    with torch.no_grad():
        t = task.explain_scores(x).argmax(1)
        f = task.explain_scores(x).gather(1, t[:, None])[:, 0]
        f0 = task.explain_scores(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    attr, gap = integrated_gradients(task.explain_scores, x, t, steps=64)
    torch.testing.assert_close(gap, f - f0 - attr.flatten(1).sum(1), rtol=1e-4, atol=1e-4)
    rel = gap.abs() / (f - f0).abs()
    assert rel.mean() < 0.01 and rel.max() < 0.05, (rel.mean(), rel.max())  # measured 0.0016 and 0.008
    assert (attr[x == 0] == 0).all()  # black pixels equal the black baseline: no attribution


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input"])
def test_the_top_attributed_pixels_carry_the_prediction(digits_run, test_digits, method):
    """Blanking the 4 pixels (of 64) ranked first drops the predicted class's probability by 0.65 on
    average (measured); blanking 4 random ink pixels by 0.14."""
    task, x = digits_run.task.eval(), test_digits
    with torch.no_grad():
        p = task.explain_scores(x).softmax(1)
    t = p.argmax(1)
    fn = integrated_gradients if method == "integrated_gradients" else gradient_x_input
    attr, _ = fn(task.explain_scores, x, t)

    def prob_after_blanking(index):
        xd = x.flatten(1).clone()
        xd.scatter_(1, index, 0.0)
        with torch.no_grad():
            return task.explain_scores(xd.view_as(x)).softmax(1).gather(1, t[:, None])[:, 0]

    g = torch.Generator().manual_seed(0)
    rand = torch.stack([(row > 0).nonzero()[:, 0][torch.randperm(int((row > 0).sum()), generator=g)[:4]]
                        for row in x.flatten(1)])
    p0 = p.gather(1, t[:, None])[:, 0]
    drop_top = float((p0 - prob_after_blanking(attr.flatten(1).topk(4, 1).indices)).mean())
    drop_rand = float((p0 - prob_after_blanking(rand)).mean())
    assert drop_top > 0.4 and drop_top > 3 * drop_rand, (drop_top, drop_rand)


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
    assert main(["explain", str(digits_run.run_dir), str(paths[0]), "--target", "7", "--method",
                 "gradient_x_input", "--out", str(out)]) == 0
    assert ": 7 (score" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--method", "lime"], "--method must be one of integrated_gradients, gradient_x_input"),
    (["--target", "12"], "--target must be a score index 0..9 or a name"),
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
    with pytest.raises(StrataError, match="attributes the outputs of classify, regress and reconstruct runs"):
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
    attr, _ = integrated_gradients(res.task.eval().explain_scores, x, torch.zeros(len(x), dtype=torch.long))
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
