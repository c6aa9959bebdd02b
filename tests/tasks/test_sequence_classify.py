"""sequence_classify on real data, briefly trained: a BiLSTM on SST-2 beats the majority class, a GRU
on FSDD beats chance by far; predict takes sentences / wav files and refuses the wrong kind."""

import pytest
import torch

from strata.errors import DataError

torch.set_num_threads(1)

SST2 = {
    "name": "sst2-test",
    "data": {"name": "sst2", "batch_size": 32, "limit": 2500, "vocab_size": 1000, "val_fraction": 0.01},
    "model": {"name": "rnn_classifier", "cell": "lstm", "hidden": 64, "bidirectional": True, "embed_dim": 64,
              "pool": "max"},
    "task": {"name": "sequence_classify"},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "trainer": {"max_epochs": 2, "progress": "off", "device": "cpu"},
}

FSDD = {
    "name": "fsdd-test",
    "data": {"name": "fsdd", "batch_size": 32, "limit": 800, "hop_ms": 20.0, "val_fraction": 0.05},
    "model": {"name": "rnn_classifier", "cell": "gru", "hidden": 64, "embed_dim": 0, "pool": "mean"},
    "task": {"name": "sequence_classify"},
    "optimizer": {"name": "adamw", "lr": 5e-3},
    "trainer": {"max_epochs": 3, "progress": "off", "device": "cpu"},
}


def _train(cfg, tmp_path):
    from strata.api import load_run, train

    result = train(cfg, run_dir=tmp_path / cfg["name"])
    return result, load_run(result.run_dir)


def test_bilstm_on_sst2_beats_the_majority_class(mirror, tmp_path):
    from strata.data import DATASETS

    result, run = _train(SST2, tmp_path)
    majority = run.info["majority_test_acc"]  # 0.509 on dev
    # 2,500 phrases, 2 epochs: ~0.66 on dev; demand 8 points above always answering the majority
    assert result.summary["test/acc"] > majority + 0.08, (result.summary, majority)

    spec = DATASETS.get("sst2")
    batch = spec.encode_inputs(["A gripping, beautifully acted film.", "Dull; the jokes don't work."], run.info,
                               run.run_dir)
    assert batch["tokens"].dtype == torch.long and batch["lengths"].tolist()[0] > 3
    out = run.task.predict_step(batch)
    assert [o["label"] in ("negative", "positive") for o in out] == [True, True]
    assert all(0.5 <= o["probability"] <= 1 and len(o["top"]) == 2 for o in out)
    with pytest.raises(DataError, match="this is a text model; give a sentence"):
        spec.encode_inputs(["recording.wav"], run.info, run.run_dir)
    with pytest.raises(DataError, match="this is a text model; give a sentence"):
        spec.encode_inputs(["photo.PNG"], run.info, run.run_dir)


def test_gru_on_fsdd_beats_chance(mirror, tmp_path):
    from strata.data import DATASETS

    result, run = _train(FSDD, tmp_path)
    # 800 recordings, 3 epochs: ~0.9 on the official test split; chance is 0.1
    assert result.summary["test/acc"] > 0.6, result.summary

    wav = next(p for p in DATASETS.get("fsdd").recordings() if p.name.startswith("7_"))
    out = run.task.predict_step(DATASETS.get("fsdd").encode_inputs([str(wav)], run.info, run.run_dir))
    assert out[0]["label"] in [str(d) for d in range(10)] and len(out[0]["top"]) == 3

    if _has_cli():
        from strata.cli import main

        bad = tmp_path / "corrupt.wav"
        bad.write_bytes(b"RIFF" + bytes(40))
        assert main(["predict", str(run.run_dir), str(bad)]) == 2  # a clear error, exit 2
        assert main(["predict", str(run.run_dir), "seven"]) == 2


def _has_cli() -> bool:
    try:
        import strata.evaluate  # noqa: F401
    except ImportError:
        return False
    return True


def test_spec_augment_masks_within_each_sequence():
    from strata.tasks.sequence_classify import spec_augment

    torch.manual_seed(0)
    x = torch.ones(4, 50, 40)
    lengths = torch.tensor([50, 40, 20, 8])
    y = spec_augment(x, lengths, freq_mask=8, time_mask=20)
    zeros = (y == 0)
    assert zeros.any()
    for i, n in enumerate(lengths.tolist()):
        masked_frames = zeros[i].all(1).sum()
        assert masked_frames <= n // 4  # the time mask never covers more than a quarter of the sequence
