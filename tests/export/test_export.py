"""`strata export`: every exportable family leaves strata as an ONNX (or torch.export) file that gives
the same answers as torch on real inputs of its data, with a JSON that lets a program using only
numpy and onnxruntime reproduce `strata predict`; every bad input gets one line and exit code 2, and
a failed export leaves no file behind.

Each run is tiny (one epoch on a few hundred real examples): these tests measure the export, not the
training.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import strata
from strata.api import load_run, train
from strata.cli import main
from strata.errors import StrataError
from strata.export import TOLERANCE, export_run
from strata.train.loader import EpochBatches

HERE = Path(__file__).resolve().parent
STANDALONE = HERE / "standalone_predict.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
OFF = {"max_epochs": 1, "seed": 0, "progress": "off"}
DIGITS = {"name": "digits", "batch_size": 64, "limit": 300}

# name: the run's config (digits: offline, shipped with scikit-learn)
IMAGE_RUNS = {
    "mlp": {"data": DIGITS, "model": {"name": "mlp", "hidden": [32]}, "task": {"name": "classify"}},
    "cnn": {"data": {**DIGITS, "normalize": True}, "model": {"name": "cnn", "channels": [8, 16], "fc_hidden": 32},
            "task": {"name": "classify"}},
    "resnet": {"data": DIGITS, "model": {"name": "resnet", "widths": [4, 8], "blocks_per_stage": 1},
               "task": {"name": "classify"}},
    "layer_list": {"data": DIGITS, "task": {"name": "classify"},
                   "model": {"name": "sequential", "layers": [
                       {"kind": "conv2d", "channels": 4, "kernel": 3, "padding": 1}, {"kind": "relu"},
                       {"kind": "maxpool2d", "kernel": 2}, {"kind": "flatten"}, {"kind": "linear"}]}},
    "autoencoder": {"data": DIGITS, "model": {"name": "autoencoder", "kind": "conv", "latent": 8, "channels": [8, 16]},
                    "task": {"name": "reconstruct", "loss": "bce"}},
    "vae_decoder": {"data": DIGITS, "model": {"name": "vae", "latent": 4, "channels": [8, 16], "hidden": 32},
                    "task": {"name": "vae"}},
    "dcgan_generator": {"data": {**DIGITS, "limit": 64, "batch_size": 16},
                        "model": {"name": "dcgan", "latent_dim": 16, "g_channels": 8, "d_channels": 8},
                        "task": {"name": "gan"}, "optimizer": {"name": "adam", "lr": 2e-4}},
    "unet_step": {"data": {**DIGITS, "limit": 32, "batch_size": 16},
                  "model": {"name": "unet", "base_channels": 8, "channel_mult": [1, 2], "attention_levels": [1]},
                  "task": {"name": "diffusion", "eval_samples": 2}, "trainer": {"max_steps": 2}},
}


def make_run(cfg: dict, where: Path, name: str) -> Path:
    cfg = {"name": name, **cfg, "trainer": {**OFF, **cfg.get("trainer", {})}}
    return train(cfg, run_dir=where / name).run_dir


def fresh_batch(run_dir: Path, size: int = 5, start: int = 40) -> dict:
    """A real batch the export was not checked on (it saw the first 14 examples): `size` examples from
    `start` of the split it checks on (test, else val)."""
    from strata.data import load_data

    bundle = load_data(load_run(run_dir).cfg.data)
    split = bundle.test if bundle.test is not None else bundle.val
    loader = EpochBatches(split, size, False, 0, torch.device("cpu"), collate=bundle.collate)
    return [b for _, b in loader.epoch(0)][start // size]


def onnx_agrees(run_dir: Path, out: dict, batch: dict) -> float:
    """max |onnxruntime - torch| on `batch`, through the task's own export graph."""
    import onnxruntime as ort

    graph = load_run(run_dir).task.export_graph(batch)
    session = ort.InferenceSession(out["out"], providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(graph.input_names, graph.args)})
    with torch.no_grad():
        ref = graph.module(*graph.args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    return max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))


def assert_exported(out: dict, fmt: str = "onnx") -> dict:
    assert out["format"] == fmt and Path(out["out"]).is_file() and out["out"].endswith("." + fmt)
    assert 0 <= out["max_abs_diff"] <= TOLERANCE and out["checked_examples"] >= 11
    meta = json.loads(Path(out["preprocessing"]).read_text())
    assert meta["strata_export"] == 1 and meta["model"] == Path(out["out"]).name
    assert meta["inputs"][0]["shape"][0] is None  # a dynamic batch
    assert not [p.name for p in Path(out["out"]).parent.iterdir() if p.name.endswith(".tmp")]
    return meta


# --- every family -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(IMAGE_RUNS))
def test_image_families_export_to_onnx_and_agree_on_a_new_batch(family, tmp_path):
    run_dir = make_run(IMAGE_RUNS[family], tmp_path, family)
    out = export_run(run_dir)
    assert_exported(out)
    assert Path(out["out"]) == run_dir / "export" / "model.onnx"
    # a batch of another size (5; checked were 4 and 7), of examples the check did not see
    assert onnx_agrees(run_dir, out, fresh_batch(run_dir)) <= TOLERANCE
    print(f"{family}: {out['graph']}, max diff {out['max_abs_diff']:.2e}, {out['seconds']} s")


USER_NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.hidden = hidden
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)
'''


def test_a_users_own_module_exports(tmp_path):
    from strata.models.user import load_class

    (tmp_path / "nets.py").write_text(USER_NET)
    Net = load_class(f"{tmp_path / 'nets.py'}:Net")  # a class of the user's file, as `[model] name` names it
    run = strata.fit(Net(hidden=12), "digits", epochs=1, run_dir=tmp_path / "own", verbose=0,
                     overrides=["data.limit=300"])
    out = export_run(run.run_dir)
    assert_exported(out)
    assert onnx_agrees(run.run_dir, out, fresh_batch(run.run_dir)) <= TOLERANCE

    class Notebook(Net):  # a class a new process cannot import: export_run takes the instance instead
        pass

    nb = strata.fit(Notebook(hidden=12), "digits", epochs=1, run_dir=tmp_path / "nb", verbose=0,
                    overrides=["data.limit=300"])
    with pytest.raises(StrataError, match="defined in a script or notebook"):
        export_run(nb.run_dir)
    assert_exported(export_run(nb.run_dir, fmt="pt2", model=Notebook(hidden=12)), "pt2")


SST = {"name": "sst2", "batch_size": 32, "limit": 300, "vocab_size": 300, "val_fraction": 0.01, "max_len": 12}
SEQUENCE_RUNS = {
    "bilstm": {"data": SST, "task": {"name": "sequence_classify"},
               "model": {"name": "rnn_classifier", "cell": "lstm", "hidden": 8, "embed_dim": 8, "bidirectional": True,
                         "pool": "last"}},
    "transformer": {"data": SST, "task": {"name": "sequence_classify"},
                    "model": {"name": "transformer_classifier", "n_layer": 1, "n_head": 2, "dim": 16,
                              "context_size": 16}},
}


@pytest.mark.parametrize("family", list(SEQUENCE_RUNS))
def test_sequence_classifiers_export_with_a_dynamic_length(family, mirror, tmp_path):
    run_dir = make_run(SEQUENCE_RUNS[family], tmp_path, family)
    out = export_run(run_dir)
    meta = assert_exported(out)
    assert [i["shape"] for i in meta["inputs"]] == [[None, None], [None]]  # (batch, length), (batch,)
    lengths = {tuple(shapes[0]) for shapes in meta["checked"]["inputs"]}
    assert len({t for _, t in lengths}) >= 2 and len({b for b, _ in lengths}) >= 2  # two lengths, two sizes
    batch = fresh_batch(run_dir)
    assert onnx_agrees(run_dir, out, batch) <= TOLERANCE
    assert meta["preprocess"]["type"] == "text" and meta["preprocess"]["normalize"] == "sst"
    if family == "bilstm":  # torch.export unrolls recurrent layers at the example's length: refused, with why
        with pytest.raises(StrataError, match="fixes the sequence dimension .* try --format onnx"):
            export_run(run_dir, fmt="pt2")
        assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.onnx", "model.onnx.json"]


@pytest.mark.parametrize("cell,layers,bidirectional,pool", [("lstm", 2, True, "last"), ("gru", 1, True, "mean"),
                                                             ("rnn", 2, False, "max"), ("lstm", 1, False, "last")])
def test_the_rnn_classifiers_export_form_computes_what_packing_computes(cell, layers, bidirectional, pool):
    from strata.models.rnn import ClassifierConfig, RNNClassifier

    torch.manual_seed(0)
    model = RNNClassifier(ClassifierConfig(cell=cell, hidden=6, layers=layers, bidirectional=bidirectional,
                                           embed_dim=5, vocab_size=30, num_classes=3, pool=pool)).eval()
    tokens, lengths = torch.randint(1, 30, (5, 9)), torch.tensor([9, 1, 4, 7, 2])
    with torch.no_grad():
        assert torch.allclose(model.for_export()(tokens, lengths), model(tokens, lengths), atol=1e-6)


GPT = {"name": "gpt", "data": {"name": "shakespeare", "block_size": 32, "stride": 32, "batch_size": 32, "limit": 200},
       "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "dim": 16, "context_size": 32},
       "task": {"name": "language_model"}}


def test_gpt_exports_to_onnx_and_pt2_with_a_dynamic_length(mirror, tmp_path):
    run_dir = make_run(GPT, tmp_path, "gpt")
    out = export_run(run_dir)
    meta = assert_exported(out)
    assert meta["inputs"][0]["shape"] == [None, None] and meta["outputs"][0]["shape"][:2] == [None, None]
    assert meta["max_sequence_length"] == 32 and meta["preprocess"]["tokenizer"] == "char"
    tokens = fresh_batch(run_dir)["tokens"][:, :20].long()  # 5 windows, 20 tokens: another size and length
    assert onnx_agrees(run_dir, out, {"tokens": torch.cat([tokens, tokens[:, :1]], 1)}) <= TOLERANCE

    pt2 = export_run(run_dir, fmt="pt2")
    assert_exported(pt2, "pt2")
    program = torch.export.load(pt2["out"]).module()
    model = load_run(run_dir).task.model
    with torch.no_grad():
        assert torch.allclose(program(tokens), model(tokens)[0], atol=TOLERANCE)


def test_cnn_exports_to_pt2_loaded_with_torch_export_load(tmp_path):
    run_dir = make_run(IMAGE_RUNS["cnn"], tmp_path, "cnn")
    out = export_run(run_dir, fmt="pt2")
    assert_exported(out, "pt2")
    x = fresh_batch(run_dir, size=9)["x"]
    program = torch.export.load(out["out"]).module()
    with torch.no_grad():
        diff = (program(x) - load_run(run_dir).task.model(x)).abs().max().item()
    assert diff <= TOLERANCE


# --- without strata: numpy and onnxruntime only ----------------------------------------------------


def test_the_standalone_program_imports_only_numpy_onnxruntime_and_the_standard_library():
    tree = ast.parse(STANDALONE.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names == {"json", "struct", "sys", "zlib", "numpy", "onnxruntime"}


def test_the_readme_shows_the_program_these_tests_run():
    readme = (HERE.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use a trained model outside strata"):]
    assert section.split("```python\n", 1)[1].split("```", 1)[0] == STANDALONE.read_text()


def standalone(model: str, *inputs: str) -> list[dict]:
    out = subprocess.run([sys.executable, str(STANDALONE), model, *inputs], capture_output=True, text=True, env=ENV,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["predictions"]


def strata_predict(run_dir, *inputs: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "strata", "predict", str(run_dir), *inputs, "--json"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["predictions"]


def assert_same_answers(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if "prediction" in b:  # a regression
            assert a["prediction"] == pytest.approx(b["prediction"], abs=1e-5)
            continue
        assert a["label"] == b["label"] and [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        for s, t in zip(a["top"], b["top"]):
            assert s["probability"] == pytest.approx(t["probability"], abs=1e-5)


def test_numpy_and_onnxruntime_alone_reproduce_strata_predict_on_png_digits(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    run_dir = make_run(IMAGE_RUNS["cnn"], tmp_path, "cnn")  # normalised inputs: mean/std travel in the JSON
    out = export_run(run_dir)
    digits = load_digits().images
    files = []
    for i, k in enumerate((0, 7, 1000)):
        pixels = np.round(digits[k] / 16 * 255).astype(np.uint8)
        if i == 2:
            pixels = 255 - pixels  # dark strokes on white: both programs invert it back
        Image.fromarray(pixels, mode="L").save(tmp_path / f"digit{i}.png")
        files.append(str(tmp_path / f"digit{i}.png"))
    assert_same_answers(standalone(out["out"], *files), strata_predict(run_dir, *files))


IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.mark.parametrize("target", ["species", "petal_width"])  # a classifier and a regressor
def test_numpy_and_onnxruntime_alone_reproduce_strata_predict_on_table_rows(tmp_path, target):
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [",".join(IRIS_COLUMNS + ["region", "species"])]
    for i, (x, y) in enumerate(zip(iris.data, iris.target)):  # a categorical column, one-hot in the model
        rows.append(",".join([*map(str, x), ("north", "south", "")[i % 3], iris.target_names[y]]))
    (tmp_path / "iris.csv").write_text("\n".join(rows) + "\n")
    cfg = {"data": {"name": "csv", "path": str(tmp_path / "iris.csv"), "target": target, "batch_size": 16},
           "model": {"name": "mlp", "hidden": [16]}, "task": {"name": "classify" if target == "species" else "regress"},
           "optimizer": {"lr": 0.01}, "trainer": {"max_epochs": 5}}
    run_dir = make_run(cfg, tmp_path, "iris")
    out = export_run(run_dir)
    meta = assert_exported(out)
    assert meta["preprocess"]["type"] == "table" and meta["preprocess"]["encoding"] == "onehot"
    known = "species=setosa" if target == "petal_width" else "petal_width=0.2"
    inputs = [f"sepal_length=5.1,sepal_width=3.5,petal_length=1.4,{known},region=north",
              "sepal_length=6.7,sepal_width=3.0,petal_length=5.2,region=west",  # an unseen value, a missing column
              "sepal_length=5.9,sepal_width=NA,petal_length=4.2"]  # a missing cell
    assert_same_answers(standalone(out["out"], *inputs), strata_predict(run_dir, *inputs))


# --- bad input: one line, exit 2, nothing written ----------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    return make_run(IMAGE_RUNS["mlp"], tmp_path_factory.mktemp("runs"), "mlp")


def test_the_cli_exports_and_prints_the_measured_difference(mlp_run, tmp_path, capsys):
    code, out, err = cli(capsys, "export", mlp_run, "--format", "pt2", "--out", tmp_path / "digits.pt2", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["out"] == str(tmp_path / "digits.pt2") and res["max_abs_diff"] <= TOLERANCE
    assert res["preprocessing"] == str(tmp_path / "digits.pt2.json")
    # its own earlier export is replaced
    code, out, err = cli(capsys, "export", mlp_run, "--format", "pt2", "--out", tmp_path / "digits.pt2")
    assert code == 0 and "max |exported - torch|" in out and "inputs: x (?, 1, 8, 8) float32" in out


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    code, out, err = cli(capsys, "export", tmp_path)
    assert code == 2 and "is not a strata run folder" in err and "Traceback" not in err
    code, out, err = cli(capsys, "export", tmp_path / "missing")
    assert code == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_a_checkpoint_is_refused(mlp_run, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(mlp_run, bare, ignore=shutil.ignore_patterns("checkpoints", "export"))
    code, out, err = cli(capsys, "export", bare)
    assert code == 2 and "no checkpoint" in err and not (bare / "export").exists()


@pytest.mark.parametrize("fmt,out", [("onnx", "model.pt2"), ("pt2", "model.onnx"), ("onnx", "model")])
def test_an_out_file_with_the_wrong_suffix_is_refused(mlp_run, tmp_path, capsys, fmt, out):
    code, _, err = cli(capsys, "export", mlp_run, "--format", fmt, "--out", tmp_path / out)
    assert code == 2 and f"ending in .{fmt}" in err
    assert list(tmp_path.iterdir()) == []


def test_a_persons_file_is_never_overwritten(mlp_run, tmp_path, capsys):
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"my own model")
    code, _, err = cli(capsys, "export", mlp_run, "--out", mine)
    assert code == 2 and "is not an export of strata" in err and mine.read_bytes() == b"my own model"
    notes = tmp_path / "other.onnx.json"  # a file of that name beside a new export is not strata's either
    notes.write_text("{}")
    code, _, err = cli(capsys, "export", mlp_run, "--out", tmp_path / "other.onnx")
    assert code == 2 and "other.onnx.json exists" in err and notes.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "other.onnx.json"]


def test_a_failed_parity_check_names_the_figure_and_keeps_no_file(mlp_run, tmp_path, monkeypatch):
    import strata.export

    monkeypatch.setattr(strata.export, "TOLERANCE", -1.0)  # no export can pass: the failure path
    with pytest.raises(StrataError, match=r"differs from torch by up to \S+ on real test inputs .*no file was kept"):
        export_run(mlp_run, fmt="pt2", out=tmp_path / "new" / "model.pt2")
    assert list(tmp_path.iterdir()) == []  # not even the folder it made


def test_a_task_that_cannot_be_exported_says_why(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["user,item,rating"] + [f"u{u},m{(u * 7 + k) % 20},{rng.integers(1, 6)}" for u in range(20) for k in range(6)]
    (tmp_path / "r.csv").write_text("\n".join(rows))
    run_dir = make_run({"data": {"name": "ratings", "path": str(tmp_path / "r.csv")}, "model": {"name": "mf"},
                        "task": {"name": "rating"}}, tmp_path, "ratings")
    code, _, err = cli(capsys, "export", run_dir)
    assert code == 2 and "(Rating) cannot be exported" in err and "strata predict RUN_DIR --user" in err
    assert not (run_dir / "export").exists()


def test_a_run_on_python_arrays_exports_when_given_real_inputs(tmp_path, capsys):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    run = strata.fit(net, (x[:200], y[:200]), epochs=1, run_dir=tmp_path / "arrays", standardize=True, verbose=0)
    with pytest.raises(StrataError, match=r"given from Python.*run.export\(inputs="):
        export_run(run.run_dir)
    assert not (run.run_dir / "export").exists()
    out = run.export(inputs=x[200:208])  # the user's own raw rows: standardised as predict does
    assert_exported(out)
    assert out["checked_examples"] == 4 + 8
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(out["out"], providers=["CPUExecutionProvider"])
    meta = json.loads(Path(out["preprocessing"]).read_text())
    assert meta["inputs"][0]["name"] == session.get_inputs()[0].name
    np.save(tmp_path / "rows.npy", x[300:306].astype(np.float32))
    code, printed, err = cli(capsys, "export", run.run_dir, "--format", "pt2", "--inputs", tmp_path / "rows.npy")
    assert code == 0, err
    with pytest.raises(StrataError, match="at least 2 examples"):
        run.export(inputs=x[:1])


def test_an_unknown_format_is_refused(mlp_run):
    with pytest.raises(StrataError, match="--format must be one of onnx, pt2"):
        export_run(mlp_run, fmt="tflite")
