"""Learning from unlabelled examples: the semi-supervised task (FixMatch) beats the same network trained on
the same labels alone, never reads the unlabelled examples' labels, and refuses data without unlabelled
examples; the contrastive task's loss equals a naive reference, its encoder fine-tunes, and a pretraining
run of another input shape is refused. Real data: scikit-learn's digits (8x8), no download."""

from __future__ import annotations

import pytest
import torch

from strata.errors import ConfigError, DataError, StrataError

torch.set_num_threads(1)

LABELS = 3  # per class: 30 labelled digits; the other 1,317 training digits are unlabelled


def semi_config(**task) -> dict:
    return {"name": "semi", "data": {"name": "digits", "labels_per_class": LABELS, "unlabelled": True,
                                     "unlabelled_ratio": 4, "val_fraction": 0.0, "batch_size": 16},
            "model": {"name": "cnn", "channels": [16, 32], "fc_hidden": 64},
            "task": {"name": "semi_supervised", "threshold": 0.9, **task},
            "optimizer": {"lr": 0.003}, "schedule": {"name": "cosine", "warmup_steps": 10},
            "trainer": {"max_steps": 400, "max_epochs": 100, "progress": "off", "seed": 0}}


def supervised_config() -> dict:
    cfg = semi_config()
    cfg["data"] = {**cfg["data"], "unlabelled": False}
    cfg["task"] = {"name": "classify", "augment": "shift", "shift_pixels": 1}
    return cfg


@pytest.fixture(scope="module")
def semi_runs(tmp_path_factory):
    from strata.api import train

    root = tmp_path_factory.mktemp("semi")
    return train(semi_config(), run_dir=root / "semi"), train(supervised_config(), run_dir=root / "supervised")


def test_batches_hold_labelled_and_unlabelled_examples():
    from strata.build import build_config
    from strata.data import load_data

    bundle = load_data(build_config(semi_config()).data)
    t = bundle.train.tensors
    assert set(t) == {"x", "y", "u"} and t["u"].shape[1:] == (4, 1, 8, 8)
    assert bundle.info["unlabelled"] == {"labelled": 30, "unlabelled": 1316, "ratio": 4}
    counts = t["y"].bincount()
    assert len(counts) == 10 and counts.max() - counts.min() <= 1  # the 30 labelled digits are cycled evenly
    labelled = {x.numpy().tobytes() for x in t["x"]}
    assert len(labelled) == 30
    assert not labelled & {u.numpy().tobytes() for u in t["u"].flatten(0, 1)}  # no labelled image is also unlabelled


def test_semi_supervised_beats_the_labels_alone(semi_runs):
    semi, supervised = (r.summary["test/acc"] for r in semi_runs)
    # measured: 0.915 against 0.804 (450 test digits, 30 labels, 400 steps each)
    assert semi >= supervised + 0.06, (semi, supervised)


def test_the_unlabelled_examples_labels_are_never_read(semi_runs, tmp_path, monkeypatch):
    """The loader hands over the true labels of every training example with a mask of those that keep
    theirs; scrambling the others' labels gives identical weights."""
    import strata.data.unlabelled as U
    from strata.api import train

    real = U.with_unlabelled
    scrambled = []

    def scramble(bundle, data_cfg, name):
        y = bundle.train.tensors["y"]
        hidden = ~torch.as_tensor(bundle.labelled)
        g = torch.Generator().manual_seed(1)
        y[hidden] = torch.randint(0, 10, (int(hidden.sum()),), generator=g)
        scrambled.append(int(hidden.sum()))
        return real(bundle, data_cfg, name)

    monkeypatch.setattr(U, "with_unlabelled", scramble)
    again = train(semi_config(), run_dir=tmp_path / "scrambled")
    assert scrambled == [1318]
    assert again.summary["weights_sha256"] == semi_runs[0].summary["weights_sha256"]


def test_semi_supervised_needs_unlabelled_examples(tmp_path):
    from strata.api import train

    cfg = semi_config()
    cfg["data"]["unlabelled"] = False
    with pytest.raises(StrataError, match="only labelled ones; set \\[data\\] unlabelled = true"):
        train(cfg, run_dir=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    cfg = supervised_config()
    cfg["data"]["unlabelled"] = True
    with pytest.raises(ConfigError, match="task 'classify' would never read"):
        train(cfg, run_dir=tmp_path / "b")
    cfg = semi_config()
    cfg["data"]["labels_per_class"] = 0
    with pytest.raises(ConfigError, match="neither is set"):
        train(cfg, run_dir=tmp_path / "c")
    cfg = semi_config()
    cfg["data"]["labels_per_class"] = 500
    with pytest.raises(DataError, match="labels_per_class = 500, but class .* has only .*lower it"):
        train(cfg, run_dir=tmp_path / "d")


# --- contrastive --------------------------------------------------------------------------------

def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n, total = len(z), 0.0
    for i in range(n):
        j = (i + n // 2) % n
        den = sum(torch.exp(z[i] @ z[k] / t) for k in range(n) if k != i)
        total += -float(torch.log(torch.exp(z[i] @ z[j] / t) / den))
    return total / n


def test_nt_xent_equals_a_naive_reference():
    from strata.tasks.contrastive import nt_xent

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for t in (0.1, 0.5, 1.0):
        loss, _ = nt_xent(z1, z2, t)
        assert float(loss) == pytest.approx(naive_nt_xent(z1, z2, t), rel=1e-5)
    loss, top1 = nt_xent(z1, z1 + 1e-3 * z2, 0.5)  # partners nearly equal: each finds its own
    assert float(top1) == 1.0


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    from strata.api import train

    cfg = {"name": "simclr", "data": {"name": "digits", "val_fraction": 0.1, "batch_size": 128},
           "model": {"name": "cnn", "channels": [16, 32], "fc_hidden": 64},
           "task": {"name": "contrastive", "temperature": 0.5, "projection_hidden": 64, "projection_dim": 32,
                    "cutout": 0.25, "rotate": 15.0, "shear": 10.0, "jitter": 0.2},  # milder views for 8x8 digits
           "optimizer": {"lr": 0.003}, "trainer": {"max_epochs": 30, "progress": "off", "seed": 0}}
    return train(cfg, run_dir=tmp_path_factory.mktemp("simclr") / "run")


def probe_config(run_dir, **model) -> dict:
    return {"name": "probe", "data": {"name": "digits", "labels_per_class": LABELS, "val_fraction": 0.0,
                                      "batch_size": 10},
            "model": {"name": "encoder_classifier", "init_from": str(run_dir), **model},
            "task": {"name": "classify"}, "optimizer": {"lr": 0.01},
            "trainer": {"max_epochs": 30, "progress": "off", "seed": 0}}


def test_contrastive_features_beat_random_ones_in_a_linear_probe(simclr_run, tmp_path):
    from strata.api import train

    # measured 0.285: a view finds its partner among the 359 other views of the 180 validation digits
    assert simclr_run.summary["val/top1"] > 0.2
    pre = train(probe_config(simclr_run.run_dir, freeze_encoder=True), run_dir=tmp_path / "pre").summary["test/acc"]
    rand = train(probe_config(simclr_run.run_dir, freeze_encoder=True, pretrained=False),
                 run_dir=tmp_path / "rand").summary["test/acc"]
    # measured: 0.931 against 0.416 (frozen features, 30 labels, 450 test digits)
    assert pre >= rand + 0.3, (pre, rand)


def test_a_pretraining_run_of_another_input_shape_is_refused(simclr_run):
    from strata.models import build_model

    with pytest.raises(StrataError, match="trained on inputs of shape \\[1, 8, 8\\], this data set gives "
                                          "\\[1, 28, 28\\]"):
        build_model("encoder_classifier", {"init_from": str(simclr_run.run_dir)}, in_shape=(1, 28, 28))


def test_contrastive_refuses_token_inputs():
    from strata.config import ComponentConfig
    from strata.tasks.contrastive import Contrastive, ContrastiveConfig

    with pytest.raises(StrataError, match="token ids"):
        Contrastive(ContrastiveConfig(), ComponentConfig("mlp", {}), {"vocab_size": 50, "in_shape": [20]})


@pytest.mark.parametrize("shape", [(6, 5), (6, 2, 12), (6, 1, 8, 8)])
def test_views_keep_shape_and_change_the_input(shape):
    from strata.tasks.augment import AugmentConfig, strong_view, weak_view

    torch.manual_seed(0)
    x = torch.rand(shape)
    for view in (weak_view, strong_view):
        v = view(x, AugmentConfig())
        assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
        assert not torch.equal(v, x)


def test_python_arrays_mark_unlabelled_examples_with_minus_one(tmp_path):
    """strata.fit(model, (x, y), task="semi_supervised"): y = -1 marks the unlabelled examples
    (scikit-learn's convention); validation examples come from the labelled ones only."""
    import numpy as np
    from sklearn.datasets import load_digits
    from torch import nn

    import strata

    d = load_digits()
    x, y = (d.images[:, None] / 16).astype(np.float32), d.target.copy()
    hidden = np.ones(len(y), dtype=bool)
    hidden[[np.flatnonzero(y == c)[i] for c in range(10) for i in range(6)]] = False
    y_semi = np.where(hidden, -1, y)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    run = strata.fit(net, (x, y_semi), task="semi_supervised", epochs=1, batch_size=8, val_split=0.2, verbose=0,
                     run_dir=tmp_path / "run")
    assert run.task.info["unlabelled"] == {"labelled": 48, "unlabelled": len(y) - 60 - (len(y) - 60) % 7, "ratio": 7}
    assert len(run.predict(x[:3])) == 3
    with pytest.raises(DataError, match="every example of y has a label; mark the unlabelled ones with -1"):
        strata.fit(net, (x, y), task="semi_supervised", verbose=0, run_dir=tmp_path / "all")
    with pytest.raises(DataError, match="0..K-1 or -1 \\(unlabelled\\), found -2"):
        strata.fit(net, (x, np.where(hidden, -2, y)), task="semi_supervised", verbose=0, run_dir=tmp_path / "neg")
    with pytest.raises(DataError, match="-1 marks an unlabelled example for task=semi_supervised"):
        strata.fit(net, (x, y_semi), verbose=0, run_dir=tmp_path / "classify")
    assert not any((tmp_path / n).exists() for n in ("all", "neg", "classify"))


def test_both_tasks_work_on_an_image_folder_a_csv_table_and_sequences(tmp_path):
    """Beyond the shipped sets: a user's image folder (semi-supervised and contrastive), a CSV table
    (noise and masked features) and float sequences given as arrays (noise, shift, masked time)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_breast_cancer, load_digits
    from torch import nn

    import strata
    from strata.api import train

    d = load_digits()
    root = tmp_path / "folder"
    for i, (img, y) in enumerate(zip(d.images[:300], d.target[:300])):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / str(y) / f"{i}.png")
    short = {"max_steps": 4, "progress": "off"}
    folder = {"name": "image_folder", "root": str(root), "image_size": 8, "channels": 1, "val_fraction": 0.0,
              "batch_size": 8}
    cnn = {"name": "cnn", "channels": [8], "fc_hidden": 16}
    semi = train({"name": "f", "data": {**folder, "labels_per_class": 2, "unlabelled": True}, "model": cnn,
                  "task": {"name": "semi_supervised"}, "trainer": short}, run_dir=tmp_path / "semi-folder")
    assert semi.summary["steps"] == 4 and "test/acc" in semi.summary
    simclr = train({"name": "c", "data": folder, "model": cnn, "task": {"name": "contrastive"}, "trainer": short},
                   run_dir=tmp_path / "simclr-folder")
    assert np.isfinite(simclr.summary["test/loss"])

    b = load_breast_cancer()
    header = ",".join([f"f{i}" for i in range(b.data.shape[1])] + ["target"])
    np.savetxt(tmp_path / "cancer.csv", np.column_stack([b.data, b.target]), delimiter=",", header=header,
               comments="", fmt=["%.6g"] * b.data.shape[1] + ["%d"])
    table = train({"name": "t", "data": {"name": "csv", "path": str(tmp_path / "cancer.csv"), "target": "target",
                                         "labels_per_class": 5, "unlabelled": True, "val_fraction": 0.0,
                                         "batch_size": 4},
                   "model": {"name": "mlp", "hidden": [16]}, "task": {"name": "semi_supervised"}, "trainer": short},
                  run_dir=tmp_path / "semi-table")
    assert table.summary["steps"] == 4

    g = np.random.default_rng(0)
    y = g.integers(0, 2, 300)
    x = (g.normal(size=(300, 2, 16)) + y[:, None, None]).astype(np.float32)  # (N, channels, time)
    y_semi = np.where(np.arange(300) < 40, y, -1)
    run = strata.fit(nn.Sequential(nn.Flatten(), nn.Linear(32, 2)), (x, y_semi), task="semi_supervised", epochs=1,
                     batch_size=4, verbose=0, run_dir=tmp_path / "semi-seq")
    assert run.task.info["unlabelled"]["unlabelled"] == 259  # 260 unlabelled, grouped 7 to an item


def test_adaptive_thresholds_start_low_and_follow_the_models_confidence():
    """FreeMatch's thresholds: 1 / classes before any batch, rising with confident predictions, and lower for a
    class the model predicts less often (scaled by its mean probability over the largest)."""
    from types import SimpleNamespace

    from strata.tasks.semi_supervised import SemiSupervised

    state = SimpleNamespace(mean_confidence=torch.full((), 0.25), class_confidence=torch.full((4,), 0.25))
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 6 + [[0.01, 0.97, 0.01, 0.01]] * 2)
    first = SemiSupervised.thresholds(state, probs, probs.max(-1).values, momentum=0.5)
    assert first[0] == pytest.approx((0.25 + 0.97) / 2)  # the running mean of the confidence, for the top class
    assert first[0] > first[1] > first[2] == first[3]  # a class predicted less often gets a lower threshold
    for _ in range(20):
        last = SemiSupervised.thresholds(state, probs, probs.max(-1).values, momentum=0.5)
    assert last[0] == pytest.approx(0.97, abs=1e-4)
    assert last[1] == pytest.approx(0.97 * (2 * 0.97 + 6 * 0.01) / (6 * 0.97 + 2 * 0.01), abs=1e-3)


def test_adaptive_thresholds_beat_the_labels_alone_and_are_checkpointed(semi_runs, tmp_path):
    """The recipe's path: with adaptive_threshold the run beats the same network on the labels alone, and its
    running confidence has left 1 / classes and is saved with the weights."""
    from strata.api import load_run, train

    run = train(semi_config(adaptive_threshold=True), run_dir=tmp_path / "adaptive")
    supervised = semi_runs[1].summary["test/acc"]
    # measured: 0.940 against 0.804 (400 steps; at 40 steps it was still at chance, 0.100)
    assert run.summary["test/acc"] >= supervised + 0.06, (run.summary["test/acc"], supervised)
    task = load_run(tmp_path / "adaptive", which="last").task
    assert 0.1 < float(task.mean_confidence) < 1.0
    assert task.class_confidence.shape == (10,) and abs(float(task.class_confidence.sum()) - 1.0) < 1e-3


def test_projection_layers_start_from_the_hidden_layer_of_the_projection_head(simclr_run):
    from strata.api import load_run
    from strata.models import build_model

    simclr = load_run(simclr_run.run_dir).task.model.eval()
    model = build_model("encoder_classifier", {"init_from": str(simclr_run.run_dir), "projection_layers": 1},
                        in_shape=(1, 8, 8), num_classes=10).eval()
    assert model.encoder.out_features == 64  # the run's projection_hidden
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        hidden = torch.relu(simclr.projector[0](simclr.encoder(x)))
        assert torch.allclose(model.encoder(x), hidden, atol=1e-6)
    with pytest.raises(StrataError, match="has 1 hidden layer\\(s\\), so at most 1 can be kept; got 2"):
        build_model("encoder_classifier", {"init_from": str(simclr_run.run_dir), "projection_layers": 2},
                    in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="needs init_from"):
        build_model("encoder_classifier", {"encoder": "autoencoder", "projection_layers": 1}, in_shape=(1, 8, 8),
                    num_classes=10)


def test_probe_steps_train_the_head_alone_first_then_every_layer(simclr_run, tmp_path):
    """LP-FT: for the first probe_steps batches the pretrained encoder (weights and BatchNorm statistics)
    stays exactly as pretrained while the head learns; then the encoder learns too; the count of batches
    is in the checkpoint, so a resumed run unfreezes on time."""
    from strata.api import load_run, train
    from strata.models import build_model

    def model_of(run_dir):
        return load_run(run_dir, which="last").task.model

    def encoder_state(run_dir):
        return {k: v.clone() for k, v in model_of(run_dir).encoder.state_dict().items()}

    def run(name, steps, **model):
        cfg = probe_config(simclr_run.run_dir, projection_layers=1, **model)
        cfg["trainer"] = {**cfg["trainer"], "max_steps": steps}
        return train(cfg, run_dir=tmp_path / name)

    torch.manual_seed(0)  # the trainer's seed: the head starts from the same random weights
    fresh = build_model("encoder_classifier", {"init_from": str(simclr_run.run_dir), "projection_layers": 1,
                                               "probe_steps": 9}, in_shape=(1, 8, 8), num_classes=10)
    pretrained = {k: v.clone() for k, v in fresh.encoder.state_dict().items()}
    probed = run("probed", 9, probe_steps=9)  # 3 epochs of the 30 labelled digits
    after = encoder_state(probed.run_dir)
    assert all(torch.equal(pretrained[k], after[k]) for k in pretrained)  # BatchNorm's running stats too
    assert int(model_of(probed.run_dir).batches_seen) == 9
    assert not torch.equal(model_of(probed.run_dir).head[-1].weight, fresh.head[-1].weight)
    tuned = encoder_state(run("tuned", 15, probe_steps=9).run_dir)
    assert not all(torch.equal(pretrained[k], tuned[k]) for k in pretrained)
    cfg = probe_config(simclr_run.run_dir, projection_layers=1, probe_steps=9)
    cfg["trainer"] = {**cfg["trainer"], "max_steps": 15}
    train(cfg, run_dir=probed.run_dir, resume=True)  # the 9-step run resumed to 15: unfreezes at the same step
    resumed = encoder_state(probed.run_dir)
    assert all(torch.equal(tuned[k], resumed[k]) for k in tuned)
    with pytest.raises(ConfigError, match="give one of the two"):
        run("both", 5, probe_steps=9, freeze_encoder=True)
