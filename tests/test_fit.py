"""strata.fit / strata.load / Run: a person's own module and data from Python, with the engine's
guarantees, and clear errors for what they get wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

import strata
from strata.errors import ConfigError, DataError, StrataError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cancer_split():
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:450], y[:450], x[450:], y[450:]


def strata_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "strata.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def test_keras_style_arrays_reach_95_percent_and_predict_matches_the_cli(tmp_path):
    x_train, y_train, x_test, y_test = cancer_split()
    model = {"name": "mlp", "hidden": [32]}  # a registered model: 30 inputs and 2 outputs come from the data
    run = strata.fit(model, (x_train, y_train), test=(x_test, y_test), epochs=20, batch_size=32, lr=1e-3,
                     standardize=True, run_dir=tmp_path / "cancer", verbose=0)
    assert run.summary["test/acc"] >= 0.95, run.summary
    assert len(run.history) == 20 and {"train/loss", "val/loss", "val/acc"} <= set(run.history[-1])
    assert run.history[-1]["train/loss"] < run.history[0]["train/loss"]
    # predict from Python (raw rows: the run standardises them) equals `strata predict` on the same rows
    ours = run.predict(x_test[:5])
    np.save(tmp_path / "rows.npy", x_test[:5])
    out = strata_cli("predict", run.run_dir, tmp_path / "rows.npy", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"] == ours
    assert [p["label"] for p in ours] == [str(int(v)) for v in run.model(
        torch.tensor((x_test[:5] - x_train.mean(0)) / x_train.std(0), dtype=torch.float32)).argmax(1)]
    # evaluate on held-out arrays agrees with the test figure of the run (same weights, same rows)
    assert run.evaluate((x_test, y_test))["test/acc"] == pytest.approx(run.summary["test/acc"])
    # load gives the same object from disk
    again = strata.load(run.run_dir)
    assert again.predict(x_test[:5]) == ours
    assert again.summary["weights_sha256"] == run.summary["weights_sha256"]
    # ... in a new process, without loading the training loop
    code = (f"import sys, strata; strata.load({str(run.run_dir)!r}).predict([0.0] * 30); "
            "assert 'strata.train.trainer' not in sys.modules, 'predict imported the trainer'")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)


def test_string_labels_are_classes_named_in_predictions(tmp_path):
    x_train, y_train, x_test, _ = cancer_split()
    names = np.array(["malignant", "benign"])[y_train]
    run = strata.fit(nn.Sequential(nn.Linear(30, 2)), (x_train, names), epochs=3, standardize=True,
                     run_dir=tmp_path / "named", verbose=0)
    assert run.info["class_names"] == ["benign", "malignant"]
    assert {p["label"] for p in run.predict(x_test[:20])} <= {"benign", "malignant"}


def test_float_targets_regress_in_their_units(tmp_path):
    x, y = load_digits(return_X_y=True)
    target = (y * 10.0 + 5.0).astype(np.float32)  # a number to predict, far from zero mean / unit scale
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    run = strata.fit(model, (x.astype(np.float32) / 16, target), epochs=8, batch_size=64, lr=3e-3, loss="huber",
                     run_dir=tmp_path / "reg", verbose=0)
    assert run.cfg.task.name == "regress" and run.cfg.task.options == {"loss": "huber"}
    assert run.summary["val/r2"] > 0.5, run.summary
    pred = run.predict(x[:50].astype(np.float32) / 16)
    assert abs(np.mean([p["prediction"] for p in pred]) - target[:50].mean()) < 20


class DigitImages(torch.utils.data.Dataset):
    """A user's own Dataset: (image, label) tuples from MNIST files read by strata's loader."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class SmallConvNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 8):
        super().__init__()
        self.classes, self.width = classes, width
        self.features = nn.Sequential(nn.Conv2d(1, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(width * 7 * 7, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))  # (B, classes)


def test_own_module_and_own_dataset_on_mnist_beat_chance(mirror, tmp_path):
    from strata.config import DataConfig
    from strata.data import load_data

    mnist = load_data(DataConfig(name="mnist", limit=3000, val_fraction=0.0))
    images, labels = mnist.train.tensors["x"], mnist.train.tensors["y"]
    test = mnist.test.tensors
    loader = torch.utils.data.DataLoader(DigitImages(images, labels), batch_size=64, shuffle=True)
    run = strata.fit(SmallConvNet(), loader, test=DigitImages(test["x"][:1000], test["y"][:1000]), epochs=2,
                     lr=3e-3, run_dir=tmp_path / "digits", verbose=0)
    assert run.cfg.data.batch_size == 64  # taken from the DataLoader
    # chance is 10 %; 3,000 images and two epochs of a tiny conv net reach far more
    assert run.summary["test/acc"] >= 0.80, run.summary
    assert run.cfg.model.options == {"classes": 10, "width": 8}  # constructor arguments recorded


TWO_OPTIMISER_TASK = '''
import torch
from torch import nn
import torch.nn.functional as F
import strata


class TwoPhase(strata.Task):
    """A custom step with two optimisers: an encoder trained by reconstruction, a head by labels."""

    def __init__(self, hidden=16):
        super().__init__()
        self.hidden = hidden
        self.encoder = nn.Linear(64, hidden)
        self.decoder = nn.Linear(hidden, 64)
        self.head = nn.Linear(hidden, 10)

    def configure_optimizers(self, cfg):
        ae = list(self.encoder.parameters()) + list(self.decoder.parameters())
        return {"autoencoder": (ae, cfg), "head": (list(self.head.parameters()), cfg)}

    def training_step(self, batch):
        x, y = batch["x"], batch["y"]
        h = torch.relu(self.encoder(x))
        yield strata.Loss("autoencoder", F.mse_loss(self.decoder(h), x))
        yield strata.Loss("head", F.cross_entropy(self.head(torch.relu(self.encoder(x)).detach()), y))

    def validation_step(self, batch):
        logits = self.head(torch.relu(self.encoder(batch["x"])))
        n = len(batch["y"])
        return {"loss": (F.cross_entropy(logits, batch["y"], reduction="sum"), n),
                "acc": ((logits.argmax(-1) == batch["y"]).sum(), n)}
'''


def import_file(path: Path, name: str):
    from strata.models.user import load_class

    return load_class(f"{path}:{name}")


def test_custom_task_with_two_optimisers_moves_only_each_phase(tmp_path):
    (tmp_path / "phases.py").write_text(TWO_OPTIMISER_TASK)
    TwoPhase = import_file(tmp_path / "phases.py", "TwoPhase")
    x, y = load_digits(return_X_y=True)
    task = TwoPhase(hidden=16)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    run = strata.fit(task, (x.astype(np.float32) / 16, y), epochs=10, batch_size=64, lr=3e-3,
                     run_dir=tmp_path / "two", verbose=0, monitor="val/acc")
    assert run.summary["val/acc"] > 0.7, run.summary  # chance: 0.1
    after = run.task.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every phase trained its weights
    # each phase's backward pass fills only its own optimiser's gradients, as the trainer runs it
    probe = TwoPhase(hidden=16)
    batch = {"x": torch.tensor(x[:8], dtype=torch.float32) / 16, "y": torch.tensor(y[:8])}
    phases = iter(probe.training_step(batch))
    ae = next(phases)
    ae.value.backward(inputs=list(probe.encoder.parameters()) + list(probe.decoder.parameters()))
    assert probe.head.weight.grad is None and probe.encoder.weight.grad is not None
    head = next(phases)
    probe.zero_grad(set_to_none=True)
    head.value.backward(inputs=list(probe.head.parameters()))
    assert probe.encoder.weight.grad is None and probe.head.weight.grad is not None
    # the run loads again in a new process from the recorded class and options
    code = f"import strata; r = strata.load({str(run.run_dir)!r}); print(type(r.task).__name__, r.task.hidden)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TwoPhase", "16"]


# --- bad input: a StrataError naming the problem and the fix -------------------------------------


def digits():
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("make, error, words", [
    (lambda: (nn.Linear(64, 5), digits()), DataError, ["[2, 5]", "expects [2, 10]", "10 classes"]),
    (lambda: (nn.Linear(64, 10), (digits()[0], digits()[1][:-3])), DataError, ["differ in length", "1,797", "1,794"]),
    (lambda: ([nn.Linear(64, 10)], digits()), ConfigError, ["torch.nn.Module", "list"]),
    (lambda: (nn.Linear, digits()), ConfigError, ["the class Linear, not an instance"]),
    (lambda: (nn.Linear(64, 10), (digits()[0], digits()[1] - 1)), DataError, ["0..K-1", "-1"]),
    (lambda: (nn.Linear(64, 10), (digits()[0], digits()[1] + 0.5)), DataError, ["whole numbers", "task='regress'"]),
    (lambda: (nn.Linear(64, 10), (np.where(np.arange(64) == 3, np.nan, digits()[0]), digits()[1])), DataError,
     ["1,797 values are NaN or inf", "[0, 3]"]),
    (lambda: (nn.Linear(32, 10), digits()), DataError, ["inputs shaped [2, 64]", "mat1 and mat2"]),
    (lambda: (nn.Linear(64, 10), [1, 2, 3]), DataError, ["expected (x, y) arrays"]),
    (lambda: (nn.Linear(64, 10), torch.utils.data.TensorDataset(torch.zeros(4, 64), torch.zeros(4), torch.zeros(4))),
     DataError, ["item 0 is a tuple", "(x, y)"]),
    (lambda: (nn.Linear(64, 10), "digitz"), DataError, ["did you mean 'digits'"]),
])
def test_bad_input_is_a_strata_error(tmp_path, make, error, words):
    model, data = make()
    with pytest.raises(error) as e:
        strata.fit(model, data, epochs=1, run_dir=tmp_path / "bad", verbose=0, task="classify")
    for w in words:
        assert w in str(e.value), str(e.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before anything was written


def test_float64_inputs_are_cast_with_one_line(tmp_path, capsys):
    x, y = load_digits(return_X_y=True)
    strata.fit(nn.Linear(64, 10), (x, y), epochs=1, run_dir=tmp_path / "f64", verbose=1)
    err = capsys.readouterr().err
    assert err.count("float64 cast to float32") == 1


def test_load_of_a_run_whose_class_is_gone(tmp_path):
    (tmp_path / "gone.py").write_text("from torch import nn\nclass Net(nn.Linear):\n"
                                      "    def __init__(self, n=64):\n        super().__init__(n, 10)\n"
                                      "        self.n = n\n")
    Net = import_file(tmp_path / "gone.py", "Net")
    run = strata.fit(Net(), digits(), epochs=1, run_dir=tmp_path / "run", verbose=0)
    assert run.cfg.model.name == f"{tmp_path / 'gone.py'}:Net" and run.cfg.model.options == {"n": 64}
    (tmp_path / "gone.py").unlink()
    code = f"import strata; strata.load({str(run.run_dir)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.returncode != 0 and "gone.py" in out.stderr.splitlines()[-1], out.stderr
    # with the instance given, the run loads without its file
    again = strata.load(run.run_dir, model=nn.Linear(64, 10))
    assert again.predict(digits()[0][:2])[0]["label"] in [str(i) for i in range(10)]


def test_a_class_defined_in_a_script_needs_the_instance_to_load(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, strata
        from torch import nn
        from sklearn.datasets import load_digits

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = nn.Linear(64, 10)

            def forward(self, x):
                return self.layer(x)

        x, y = load_digits(return_X_y=True)
        run = strata.fit(Net(), (x.astype(np.float32), y), epochs=1, run_dir={str(tmp_path / 'run')!r}, verbose=0)
        print(run.cfg.model.name)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python:__main__:Net"
    with pytest.raises(StrataError, match=r"defined in a script or notebook.*model=Net\(\.\.\.\)"):
        strata.load(tmp_path / "run")
    cli = strata_cli("evaluate", tmp_path / "run")
    assert cli.returncode == 2 and "model=Net(...)" in cli.stderr, cli.stderr


FIT_SCRIPT = '''
import sys
import torch
import strata
from nets import Net

torch.manual_seed(7)
run_dir, resume = sys.argv[1], "--resume" in sys.argv
strata.fit(Net(hidden=32), {"name": "digits"}, epochs=12, batch_size=32, lr=3e-3, schedule={"name": "cosine",
           "warmup_steps": 10}, seed=7, run_dir=run_dir, resume=resume, verbose=0,
           overrides=["trainer.checkpoint_every_n_steps=5", "trainer.deterministic=true"])
'''
NETS = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=16, in_features=64, num_classes=10):
        super().__init__()
        self.hidden, self.in_features, self.num_classes = hidden, in_features, num_classes
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.2),
                                    nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.layers(x)
'''


def test_a_fit_run_killed_mid_epoch_and_resumed_is_bit_identical(tmp_path):
    from train.test_resume import check_sigkill_then_resume_is_bit_identical

    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "train.py").write_text(FIT_SCRIPT)

    def cmd(cfg, run_dir, *extra):
        return [sys.executable, str(tmp_path / "train.py"), str(run_dir), *extra]

    check_sigkill_then_resume_is_bit_identical(tmp_path / "train.py", tmp_path, cmd)


DDP_SCRIPT = '''
import sys
import numpy as np
import torch
from sklearn.datasets import load_digits
import strata
from nets import Net

torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
run = strata.fit(Net(hidden=64), (x[:1184].astype(np.float32) / 16, y[:1184]), val_split=0, epochs=2,
                 batch_size=int(sys.argv[2]), optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                 run_dir=sys.argv[1], device="cpu", verbose=2)
'''


def test_two_torchrun_processes_of_a_fit_script_match_one(tmp_path):
    from train.test_distributed import _free_port, _run

    from strata.train.checkpoint import load_checkpoint

    # a layer the forward never calls: DDP must not wait for its gradients (find_unused_parameters)
    unused = "self.spare = nn.Linear(4, 4)\n        self.layers"
    nets = NETS.replace("nn.Dropout(0.2)", "nn.Identity()").replace("self.layers", unused, 1)
    (tmp_path / "nets.py").write_text(nets)
    (tmp_path / "train.py").write_text(DDP_SCRIPT)
    paths = [str(tmp_path)] + ([ENV["PYTHONPATH"]] if ENV.get("PYTHONPATH") else [])  # strata itself from here too
    env = {**ENV, "PYTHONPATH": os.pathsep.join(paths)}
    _run([sys.executable, str(tmp_path / "train.py"), str(tmp_path / "one"), "32"], env)
    out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(tmp_path / "train.py"),
                str(tmp_path / "two"), "16"], env)  # 2 x 16: the same global batch
    assert out.stdout.count("training net-classify") == 1  # only rank 0 reports
    w1, _, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "last")
    w2, s2, _ = load_checkpoint(tmp_path / "two" / "checkpoints" / "last")
    assert s2["step"] == 2 * 37
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    assert "model.spare.weight" in w2
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_a_csv_file_and_bf16(tmp_path):
    """data as a CSV path with its target column; precision='bf16' (autocast on the CPU)."""
    x, y = load_digits(return_X_y=True)
    rows = [",".join([f"p{i}" for i in range(64)] + ["digit"])]
    rows += [",".join([str(int(v)) for v in xi] + [f"d{int(yi)}"]) for xi, yi in zip(x[:600], y[:600])]
    (tmp_path / "digits.csv").write_text("\n".join(rows) + "\n")
    run = strata.fit({"name": "mlp", "hidden": [64]}, tmp_path / "digits.csv", target="digit", epochs=5, lr=3e-3,
                     precision="bf16", run_dir=tmp_path / "csv", verbose=0)
    assert run.cfg.data.name == "csv" and run.cfg.trainer.precision == "bf16"
    assert run.info["class_names"][:3] == ["d0", "d1", "d2"]
    assert run.summary["test/acc"] > 0.8, run.summary  # chance: 0.1
    with pytest.raises(ConfigError, match="target="):
        strata.fit("mlp", tmp_path / "digits.csv", run_dir=tmp_path / "no-target", verbose=0)


def test_callbacks_reach_the_run_and_can_stop_it(tmp_path):
    class StopAfterTwoEpochs(strata.Callback):
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, trainer, metrics):
            self.epochs.append(round(metrics["val/acc"], 4))
            if len(self.epochs) == 2:
                trainer.request_stop("two epochs are enough")

    cb = StopAfterTwoEpochs()
    run = strata.fit(nn.Linear(64, 10), digits(), epochs=10, callbacks=[cb], run_dir=tmp_path / "cb", verbose=0)
    assert len(cb.epochs) == 2 and run.summary["epochs"] == 2
    assert [round(h["val/acc"], 4) for h in run.history] == cb.epochs


def test_an_nn_sequential_of_torch_layers_is_recorded_layer_by_layer(tmp_path):
    """Keras users' first model: nn.Sequential(...). Its layers' classes and arguments go into the
    run config, so `strata predict` in a new process rebuilds it and answers as run.predict does."""
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                          nn.Sequential(nn.Linear(32, 16), nn.Tanh()), nn.Linear(16, 10))
    run = strata.fit(model, (x, y), epochs=2, run_dir=tmp_path / "seq", verbose=0)
    assert run.cfg.model.name == "strata.nn.stack:Stack"
    assert run.cfg.model.options["layers"][0] == {"name": "torch.nn.modules.linear:Linear", "in_features": 64,
                                                  "out_features": 32, "bias": False}
    np.save(tmp_path / "rows.npy", x[:4])
    out = strata_cli("predict", run.run_dir, tmp_path / "rows.npy", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"] == run.predict(x[:4])
    # a layer that a new process cannot build (a class defined in a function) leaves the whole stack
    # needing the instance
    class Local(nn.Identity):
        pass

    odd = nn.Sequential(nn.Linear(64, 10), Local())
    assert strata.fitting.module_section(odd)["name"] == "python:torch.nn.modules.container:Sequential"
