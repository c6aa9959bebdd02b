"""Audio: wav reading at every PCM width, stereo to mono, windowed-sinc resampling against the exact
signal, the HTK mel filterbank and log-mel frames, corrupt files, safe extraction, and the FSDD
official split with conversion of a foreign-format recording at predict time."""

import io
import math
import struct
import tarfile
import wave

import numpy as np
import pytest
import torch

from strata.data.audio import (FSDD, Features, extract_tar, hz_to_mel, mel_filterbank, mel_to_hz, read_wav,
                               resample)
from strata.errors import DataError

torch.set_num_threads(1)


def write_wav(path, samples: np.ndarray, rate: int, width: int):
    """samples (n, channels) in [-1, 1] -> PCM wav of `width` bytes per sample."""
    samples = np.atleast_2d(samples.T).T
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    q = np.round(samples * scale).astype(np.int64)
    if width == 1:
        raw = (q + 128).astype(np.uint8).tobytes()
    elif width == 3:
        b = (q.reshape(-1) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3]
        raw = b.tobytes()
    else:
        raw = q.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def tone(freq, rate, seconds=0.25):
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_every_pcm_width(tmp_path, width):
    x = tone(300, 8000)
    write_wav(tmp_path / "a.wav", x, 8000, width)
    y, rate, channels = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and channels == 1 and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=2.0 / {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width])


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(300, 8000), 0.5 * tone(700, 8000)
    write_wav(tmp_path / "s.wav", np.stack([left, right], 1), 8000, 2)
    y, _, channels = read_wav(tmp_path / "s.wav")
    assert channels == 2
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize("orig, new", [(44100, 8000), (22050, 8000), (16000, 8000), (8000, 16000), (11025, 8000)])
def test_resampled_sine_matches_the_exact_signal(orig, new):
    x = torch.from_numpy(tone(440, orig))
    y = resample(x, orig, new)
    assert len(y) == math.ceil(len(x) * new / orig)
    exact = torch.from_numpy(tone(440, new, len(y) / new))[: len(y)]
    edge = new // 50  # the first and last 20 ms see the zero padding
    assert (y - exact)[edge:-edge].abs().max() < 2e-3


def test_resampling_removes_frequencies_above_the_new_nyquist():
    y = resample(torch.from_numpy(tone(6000, 44100)), 44100, 8000)  # 6 kHz > 4 kHz Nyquist
    assert y[200:-200].pow(2).mean().sqrt() < 0.01  # vs 0.35 rms if it aliased to 2 kHz


def test_resampling_odd_rates_and_identity():
    x = torch.from_numpy(tone(440, 44101))
    assert len(resample(x, 44101, 8000)) == math.ceil(len(x) * 8000 / 44101)
    assert resample(x, 8000, 8000) is x


def test_htk_mel_filterbank():
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)  # the HTK scale's anchor
    assert mel_to_hz(hz_to_mel(3210.0)) == pytest.approx(3210.0)
    fb = mel_filterbank(256, 8000, 40)
    assert fb.shape == (129, 40) and fb.min() >= 0 and fb.max() <= 1
    peaks = fb.argmax(0)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the filter index
    assert torch.all(fb.max(0).values > 0.3)  # every filter covers at least one bin


def test_log_mel_frames_put_a_tone_in_the_right_band():
    f = Features()
    x = torch.from_numpy(tone(1000, 8000, 0.5)).float()
    feats = f.log_mel(x)
    assert feats.shape == (1 + len(x) // f.hop_length, f.n_mels)
    band = int(feats[5:-5].mean(0).argmax())
    centres = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(4000), f.n_mels + 2))[1:-1]
    assert abs(centres[band] - 1000) < 60


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00", b"not audio at all" * 100, b"\x89PNG\r\n\x1a\n" + bytes(200)])
def test_corrupt_or_non_audio_files_raise_data_error(tmp_path, content):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(DataError, match="not a readable PCM .wav file"):
        read_wav(p)


def test_float_wav_and_empty_wav_are_refused(tmp_path):
    data = struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)  # WAVE_FORMAT_IEEE_FLOAT
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    with pytest.raises(DataError, match="PCM"):
        read_wav(tmp_path / "f.wav")
    write_wav(tmp_path / "e.wav", np.zeros((0, 1)), 8000, 2)
    with pytest.raises(DataError, match="no audio samples"):
        read_wav(tmp_path / "e.wav")


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = 3
                tf.addfile(info, io.BytesIO(b"abc"))


@pytest.mark.parametrize("bad", [("../evil.txt", "file"), ("/abs.txt", "file"), ("d/link", "link")])
def test_extraction_refuses_unsafe_members_and_leaves_nothing(tmp_path, bad):
    _tar(tmp_path / "a.tar.gz", [("d/ok.txt", "file"), bad])
    with pytest.raises(DataError, match="refusing"):
        extract_tar(tmp_path / "a.tar.gz", tmp_path / "out" / "x")
    assert list((tmp_path / "out").iterdir()) == []  # no half-extracted folder
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_is_done_once(tmp_path):
    _tar(tmp_path / "a.tar.gz", [("d/ok.txt", "file")])
    out = extract_tar(tmp_path / "a.tar.gz", tmp_path / "x")
    assert (out / "d" / "ok.txt").read_bytes() == b"abc"
    (out / "d" / "ok.txt").write_bytes(b"changed")
    extract_tar(tmp_path / "a.tar.gz", tmp_path / "x")
    assert (out / "d" / "ok.txt").read_bytes() == b"changed"


def test_fsdd_official_split_and_predict_inputs(mirror, tmp_path, capsys):
    from strata.config import DataConfig
    from strata.data import load_data

    spec = FSDD()
    wavs = spec.recordings()
    test_names = [p.name for p in wavs if int(p.stem.split("_")[2]) <= 4]
    assert len(wavs) == 3000 and len(test_names) == 300
    b = load_data(DataConfig(name="fsdd", val_fraction=0.1, options={"hop_ms": 20.0}))
    assert len(b.test) == 300 and len(b.train) + len(b.val) == 2700 and len(b.val) == 270
    assert b.train.tensors["x"].shape[2] == 40 and b.info["in_features"] == 40
    # train frames are standardised with the train statistics
    x, n = b.train.tensors["x"], b.train.tensors["lengths"]
    valid = torch.arange(x.shape[1])[None, :] < n[:, None]
    assert x[valid].mean().abs() < 1e-3 and (x[valid].std() - 1).abs() < 1e-2

    # a recording at 44.1 kHz, stereo, 24-bit gives (nearly) the features of the original
    original = wavs[0]
    y, rate, _ = read_wav(original)
    up = resample(torch.from_numpy(y).double(), rate, 44100).numpy()
    write_wav(tmp_path / "converted.wav", np.stack([up, up], 1).clip(-1, 1), 44100, 3)
    batch = spec.encode_inputs([str(original), str(tmp_path / "converted.wav")], b.info, tmp_path)
    assert "44100 Hz, 2 channel(s) -> 8000 Hz mono" in capsys.readouterr().err
    a, c = batch["x"][0], batch["x"][1]
    T = int(batch["lengths"][0])
    assert int(batch["lengths"][1]) == T
    assert (a[:T] - c[:T]).abs().mean() < 0.05  # standardised units

    with pytest.raises(DataError, match="this is a speech model"):
        spec.encode_inputs(["what a lovely film"], b.info, tmp_path)
    with pytest.raises(DataError, match="an image was given to a speech model"):
        spec.encode_inputs(["digit.png"], b.info, tmp_path)
    (tmp_path / "noise.wav").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="not a readable PCM .wav file"):
        spec.encode_inputs([str(tmp_path / "noise.wav")], b.info, tmp_path)
