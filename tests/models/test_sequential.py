"""The layer-list model: every kind builds from a shape it is given and trains (forward and backward),
LeNet-5 has the paper's parameter count, every bad layer table is an error that names the layer, its
kind and what it needs (exit code 2 from the command line), and a layer list learns real digits."""

from __future__ import annotations

import json

import pytest
import torch

from strata.cli import main
from strata.config import from_dict
from strata.build import load_config
from strata.errors import ConfigError
from strata.models.sequential import KINDS, LENET5, PRESETS, Sequential, SequentialConfig

B = 3


def build(layers, **facts) -> Sequential:
    return Sequential(from_dict(SequentialConfig, {"layers": layers, **facts}, "[model]"))


IMAGE = {"in_shape": [2, 12, 12], "num_classes": 5}
SIGNAL = {"in_shape": [2, 20], "num_classes": 5}  # (C, L)
ROW = {"in_shape": [6], "num_classes": 5}
TEXT = {"vocab_size": 30, "num_classes": 5}  # (T,) token ids
FRAMES = {"in_features": 4, "num_classes": 5}  # (T, F), no in_shape: traced at 16 steps


def conv1d(**k):
    return {"kind": "conv1d", "channels": 4, "kernel": 3, **k}


def conv2d(**k):
    return {"kind": "conv2d", "channels": 4, "kernel": 3, **k}


# kind -> (layers, data facts, output shape of one example); every kind appears in the first layer table
CASES = {
    "conv1d": ([conv1d(stride=2, padding=1, groups=2, bias=False)], SIGNAL, (4, 10)),
    "conv2d": ([conv2d(stride=2, padding=1, groups=2)], IMAGE, (4, 6, 6)),
    "linear": ([{"kind": "linear", "features": 7, "bias": False}], ROW, (7,)),
    "maxpool1d": ([{"kind": "maxpool1d", "kernel": 2}], SIGNAL, (2, 10)),
    "maxpool2d": ([{"kind": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1}], IMAGE, (2, 6, 6)),
    "avgpool1d": ([{"kind": "avgpool1d", "kernel": 4}], SIGNAL, (2, 5)),
    "avgpool2d": ([{"kind": "avgpool2d", "kernel": 2}], IMAGE, (2, 6, 6)),
    "adaptive_avgpool1d": ([{"kind": "adaptive_avgpool1d", "size": 3}], SIGNAL, (2, 3)),
    "adaptive_avgpool2d": ([{"kind": "adaptive_avgpool2d"}], IMAGE, (2, 1, 1)),
    "adaptive_maxpool1d": ([{"kind": "adaptive_maxpool1d"}], SIGNAL, (2, 1)),
    "adaptive_maxpool2d": ([{"kind": "adaptive_maxpool2d", "size": 2}], IMAGE, (2, 2, 2)),
    "batchnorm": ([{"kind": "batchnorm"}, {"kind": "flatten"}, {"kind": "batchnorm"}], IMAGE, (288,)),
    "batchnorm1d": ([{"kind": "batchnorm1d"}], SIGNAL, (2, 20)),
    "batchnorm2d": ([{"kind": "batchnorm2d"}], IMAGE, (2, 12, 12)),
    "layernorm": ([{"kind": "layernorm"}], ROW, (6,)),
    "groupnorm": ([{"kind": "groupnorm", "groups": 2}], IMAGE, (2, 12, 12)),
    "dropout": ([{"kind": "dropout", "p": 0.2}], ROW, (6,)),
    "relu": ([{"kind": "relu"}], ROW, (6,)),
    "gelu": ([{"kind": "gelu"}], ROW, (6,)),
    "silu": ([{"kind": "silu"}], ROW, (6,)),
    "tanh": ([{"kind": "tanh"}], ROW, (6,)),
    "sigmoid": ([{"kind": "sigmoid"}], ROW, (6,)),
    "leaky_relu": ([{"kind": "leaky_relu", "slope": 0.2}], ROW, (6,)),
    "softmax": ([{"kind": "softmax"}], ROW, (6,)),
    "flatten": ([{"kind": "flatten"}], IMAGE, (288,)),
    "embedding": ([{"kind": "embedding", "dim": 8}], TEXT, (16, 8)),
    "lstm": ([{"kind": "lstm", "hidden": 5, "layers": 2, "bidirectional": True, "dropout": 0.1}], FRAMES, (10,)),
    "gru": ([{"kind": "gru", "hidden": 5, "output": "sequence"}], FRAMES, (16, 5)),
    "residual": ([{"kind": "residual", "layers": [conv2d(channels=2, padding=1), {"kind": "relu"}]}], IMAGE,
                 (2, 12, 12)),
}


def example(facts, b=B):
    if "vocab_size" in facts:
        return torch.randint(0, facts["vocab_size"], (b, 16))
    shape = facts.get("in_shape") or [16, facts["in_features"]]
    return torch.randn(b, *shape)


def test_every_kind_has_a_case():
    assert sorted(CASES) == sorted(KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_kind_builds_runs_forward_and_backward(kind):
    layers, facts, shape = CASES[kind]
    assert layers[0]["kind"] == kind
    torch.manual_seed(0)
    model = build(layers, **facts)
    assert model.out_shape == shape
    x = example(facts)
    y = model(x)
    assert tuple(y.shape) == (B, *shape) and torch.isfinite(y).all()
    # a whole classifier on top: a final linear without features gives num_classes outputs
    head = build([*layers, {"kind": "flatten"}, {"kind": "linear"}], **facts)
    if x.is_floating_point():
        x.requires_grad_(True)
    out = head(x)
    assert out.shape == (B, facts["num_classes"])
    out.pow(2).mean().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert not x.is_floating_point() or x.grad.abs().sum() > 0  # and back through every layer


def test_lenet5_has_the_papers_parameter_count_and_shapes():
    # C1 6*(1*25)+6 = 156; C3 16*(6*25)+16 = 2,416; C5 120*(16*25)+120 = 48,120;
    # F6 84*120+84 = 10,164; output 10*84+10 = 850; pools and tanh have none: 61,706
    model = build(list(LENET5), in_shape=[1, 28, 28], num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    assert PRESETS["lenet5"][1] == 61_706
    shapes, x = [], torch.zeros(2, 1, 28, 28)
    for layer in model.layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[0] == (6, 28, 28) and shapes[2] == (6, 14, 14) and shapes[3] == (16, 10, 10)
    assert shapes[5] == (16, 5, 5) and shapes[6] == (120, 1, 1) and shapes[-1] == (10,)


def test_the_recipe_is_lenet5():
    from strata.recipes import recipes_dir

    cfg = load_config(recipes_dir() / "mnist-lenet5.toml")
    assert cfg.model.name == "sequential" and tuple(cfg.model.options["layers"]) == LENET5


def test_recurrent_layers_pack_padded_batches():
    torch.manual_seed(0)
    model = build([{"kind": "embedding", "dim": 6}, {"kind": "gru", "hidden": 4, "bidirectional": True}],
                  vocab_size=20, num_classes=2).eval()
    short = torch.randint(1, 20, (1, 5))
    padded = torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], 1)  # 4 steps of padding (id 0)
    with torch.no_grad():
        alone = model(short)
        packed = model(padded, torch.tensor([5]))
        unpacked = model(padded)
    torch.testing.assert_close(packed, alone)  # padding never reaches the state
    assert not torch.allclose(unpacked, alone)
    # "last" is the final step of the forward direction and the first of the backward one
    seq = build([{"kind": "lstm", "hidden": 3, "output": "sequence"}], in_features=4)
    last = build([{"kind": "lstm", "hidden": 3}], in_features=4)
    last.load_state_dict(seq.state_dict())
    x = torch.randn(2, 7, 4)
    torch.testing.assert_close(last(x), seq(x)[:, -1])


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers, fragments", [
    ([{"kind": "conv3d"}], ["[model] layers[0]: layer kind 'conv3d' is unknown (did you mean 'conv2d'?)",
                            "kinds: conv1d, conv2d, linear"]),
    ([{"kind": "relu"}, {"kind": "residual", "layers": [{"kind": "lienar"}]}],
     ["[model] layers[1].layers[0]: layer kind 'lienar' is unknown (did you mean 'linear'?)"]),
    ([{"channels": 3}], ["[model] layers[0]: every layer needs kind"]),
    ([{"kind": "conv2d", "chanels": 6, "kernel": 5}],
     ["[model] layers[0] (conv2d): unknown key 'chanels' (did you mean 'channels'?)",
      "valid keys: bias, channels, groups, kernel, padding, stride"]),
    ([{"kind": "conv2d", "kernel": 5}], ["[model] layers[0] (conv2d): missing key 'channels'"]),
    ([{"kind": "tanh", "slope": 1}], ["[model] layers[0] (tanh): unknown key 'slope'", "no keys besides kind"]),
    ([{"kind": "linear", "features": "ten"}], ["[model] layers[0] (linear) features: expected an integer"]),
    ([{"kind": "dropout", "p": 1.5}], ["[model] layers[0] (dropout) p: must be in [0, 1), got 1.5"]),
    ([{"kind": "maxpool2d", "kernel": 0}], ["[model] layers[0] (maxpool2d) kernel: must be >= 1, got 0"]),
    ([{"kind": "lstm", "hidden": 4, "output": "all"}], ["[model] layers[0] (lstm) output: must be one of"]),
    ([], ["[model] layers: must hold at least one layer table"]),
])
def test_bad_layer_tables_fail_at_config_load(layers, fragments):
    with pytest.raises(ConfigError) as e:
        SequentialConfig(layers=tuple(layers))
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize("layers, facts, fragments", [
    ([{"kind": "relu"}, conv1d()], IMAGE, ["[model] layers[1] (conv1d): received shape [2, 12, 12], needs (C, L)"]),
    ([conv2d(kernel=13)], IMAGE, ["[model] layers[0] (conv2d): received shape [2, 12, 12], needs each spatial size "
                                  ">= kernel - 2 * padding = 13"]),
    ([{"kind": "maxpool2d", "kernel": 4}] * 2, IMAGE,
     ["[model] layers[1] (maxpool2d): received shape [2, 3, 3], needs each spatial size >= kernel - 2 * padding = 4"]),
    ([conv2d(channels=3, groups=2)], IMAGE, ["layers[0] (conv2d): received shape [2, 12, 12], needs input channels "
                                             "(2) and channels (3) divisible by groups = 2"]),
    ([{"kind": "residual", "layers": [conv2d()]}], IMAGE,
     ["[model] layers[0] (residual): received shape [2, 12, 12], needs its layers to return the shape they "
      "receive, [2, 12, 12]; they return [4, 10, 10]"]),
    ([{"kind": "residual", "layers": [{"kind": "relu"}, conv1d()]}], IMAGE,
     ["[model] layers[0].layers[1] (conv1d): received shape [2, 12, 12], needs (C, L)"]),
    ([{"kind": "lstm", "hidden": 4}], IMAGE, ["layers[0] (lstm): received shape [2, 12, 12], needs (T, F)"]),
    ([{"kind": "embedding", "dim": 4}], ROW, ["layers[0] (embedding): received shape [6], needs token ids"]),
    ([{"kind": "linear", "features": 4}], TEXT, ["layers[0] (linear): received shape [16], needs real values; "
                                                 "token ids go through an embedding first"]),
    ([{"kind": "groupnorm", "groups": 4}], IMAGE, ["layers[0] (groupnorm): received shape [2, 12, 12], needs "
                                                   "(C, ...) with C divisible by groups = 4"]),
    ([{"kind": "linear"}], {"in_shape": [6]}, ["layers[0] (linear): received shape [6], needs features"]),
])
def test_shapes_that_do_not_fit_name_the_layer_and_both_shapes(layers, facts, fragments):
    with pytest.raises(ConfigError) as e:
        build(layers, **facts)
    for f in fragments:
        assert f in str(e.value)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """strata.cli.main in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def digits_net(**edits) -> dict:
    """A small residual CNN on scikit-learn's 8x8 digits; edits: layer index -> replacement table."""
    conv = {"kind": "conv2d", "channels": 16, "kernel": 3, "padding": 1}
    layers = [conv, {"kind": "batchnorm"}, {"kind": "relu"}, {"kind": "maxpool2d", "kernel": 2},
              {"kind": "residual", "layers": [conv, {"kind": "relu"}]},
              {"kind": "flatten"}, {"kind": "dropout", "p": 0.1}, {"kind": "linear"}]
    for i, table in edits.items():
        layers[int(i[1:])] = table
    return {"name": "digits-sequential", "data": {"name": "digits", "batch_size": 32},
            "model": {"name": "sequential", "layers": layers}, "task": {"name": "classify"},
            "optimizer": {"name": "adamw", "lr": 0.003}, "trainer": {"max_epochs": 3, "seed": 0}}


def write_toml(path, cfg: dict):
    import tomli_w

    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("edits, fragments", [
    ({"l3": {"kind": "maxpool", "kernel": 2}},
     ["[model] layers[3]: layer kind 'maxpool' is unknown (did you mean 'maxpool2d'?)", "kinds: conv1d, conv2d"]),
    ({"l6": {"kind": "dropout", "rate": 0.1}}, ["[model] layers[6] (dropout): unknown key 'rate'; valid keys: p"]),
    ({"l3": {"kind": "maxpool2d", "kernel": 9}}, ["[model] layers[3] (maxpool2d): received shape [16, 8, 8], needs "
                                                 "each spatial size >= kernel - 2 * padding = 9"]),
    ({"l5": {"kind": "relu"}}, ["[model] layers[7] (linear): received shape [16, 4, 4], needs (F,) or (T, F) "
                                "(a flatten first?)"]),
])
@pytest.mark.parametrize("command", ["summary", "train"])
def test_bad_layers_exit_2_from_the_command_line(tmp_path, capsys, edits, fragments, command):
    cfg = write_toml(tmp_path / "run.toml", digits_net(**edits))
    code, out, err = cli(capsys, command, cfg, *(["--run-dir", tmp_path / "run"] if command == "train" else []))
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    assert not (tmp_path / "run").exists()


def test_summary_lists_each_layers_output_shape_and_parameters(tmp_path, capsys):
    code, out, err = cli(capsys, "summary", write_toml(tmp_path / "run.toml", digits_net()), "--json")
    assert code == 0, err
    s = json.loads(out)
    rows = {r["name"]: r for r in s["layers"]}
    assert rows["model.layers.0"]["output_shape"] == [2, 16, 8, 8] and rows["model.layers.0"]["params"] == 16 * 9 + 16
    assert rows["model.layers.3"]["output_shape"] == [2, 16, 4, 4]
    assert rows["model.layers.4.0"]["params"] == 16 * 16 * 9 + 16  # inside the residual
    assert rows["model.layers.7"]["type"] == "Linear" and rows["model.layers.7"]["output_shape"] == [2, 10]
    assert rows["model.layers.7"]["params"] == 256 * 10 + 10
    assert s["parameters"] == sum(r["params"] for r in s["layers"])


def test_a_layer_list_learns_real_digits(tmp_path):
    from strata.api import train

    config = write_toml(tmp_path / "run.toml", digits_net())
    result = train(str(config), run_dir=tmp_path / "run")
    assert result.summary["test/acc"] >= 0.9  # chance is 0.1
    # the layer list survives the run folder's config.toml (arrays of tables, a nested residual list)
    again = load_config(tmp_path / "run" / "config.toml")
    assert again.model.options["layers"] == load_config(config).model.options["layers"]


def test_a_final_linear_without_features_fits_a_regression_target(tmp_path):
    import numpy as np

    from strata.api import train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5) + np.tanh(3 * x[:, 0])).astype(np.float32)  # one number per row
    np.savez(tmp_path / "table.npz", x=x, y=y)
    layers = [{"kind": "linear", "features": 32}, {"kind": "silu"}, {"kind": "linear"}]
    result = train({"name": "table", "data": {"name": "numpy", "path": str(tmp_path / "table.npz"), "batch_size": 32},
                    "model": {"name": "sequential", "layers": layers}, "task": {"name": "regress"},
                    "optimizer": {"name": "adamw", "lr": 0.01}, "trainer": {"max_epochs": 10, "seed": 0}},
                   run_dir=tmp_path / "run")
    assert result.summary["test/r2"] > 0.8  # a constant scores 0 (this reaches 0.92)
