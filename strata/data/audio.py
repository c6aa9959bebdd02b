"""Audio: .wav reading (stdlib `wave` + numpy), resampling and log-mel spectrograms in torch only
(torchaudio has no CPU build here), and the Free Spoken Digit Dataset.

- Reading: RIFF/WAVE PCM at 8, 16, 24 or 32 bits; several channels are averaged to mono. Anything
  else (a corrupt file, a compressed or float wav, a file that is not audio) raises DataError.
- Resampling: band-limited interpolation with a Hann-windowed sinc (Smith, "Digital Audio
  Resampling", the method of resampy / julius / torchaudio's `sinc_interp_hann`), computed
  polyphase: the ratio is reduced by the gcd of the rates to orig:new, and each of the `new` output
  phases has its own kernel, applied by one strided conv1d. The low-pass cut-off sits at
  rolloff * min(orig, new) / 2 with `zeros` zero-crossings on each side.
- Features: power spectrogram |STFT|^2 (`torch.stft`, Hann window), a triangular mel filterbank
  on the HTK mel scale  mel(f) = 2595 * log10(1 + f / 700)  (unnormalised triangles of peak 1,
  as HTK), then log(mel + 1e-6).

"fsdd": Jackson et al., Free Spoken Digit Dataset: 3,000 recordings (6 speakers x 10 digits x 50)
at 8 kHz. The official split: recordings 0-4 of every speaker and digit are the test set (300);
val is carved from the rest (data.val_fraction, stratified by speaker and digit, data.split_seed).
Features are standardised per mel channel with the training split's mean and std (kept in info).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from strata.config import check
from strata.data import DATASETS
from strata.data import splits as S
from strata.data.base import DataBundle, DatasetSpec, TensorSplit
from strata.data.download import RemoteFile, cached_path, fetch
from strata.errors import DataError

# ---------------------------------------------------------------------------------------------
# Reading


def read_wav(path) -> tuple[np.ndarray, int, int]:
    """(mono samples float32 in [-1, 1], sample rate, channels in the file)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable PCM .wav file ({e}); expected RIFF/WAVE PCM with 8, 16, 24 or "
                        f"32-bit samples (convert it with e.g. `ffmpeg -i IN -acodec pcm_s16le OUT.wav`)") from None
    if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
        raise DataError(f"{path}: unsupported wav: {width * 8}-bit, {channels} channel(s), {rate} Hz; expected PCM "
                        f"with 8, 16, 24 or 32-bit samples")
    usable = len(raw) // (width * channels) * width * channels
    if usable == 0:
        raise DataError(f"{path}: the wav holds no audio samples")
    raw = raw[:usable]
    if width == 1:  # unsigned, offset 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:  # little-endian 24-bit: place the 3 bytes in the top of an int32, shift back (sign kept)
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = (((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 8).astype(np.float32) / 8388608.0
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    x = x.reshape(-1, channels).mean(axis=1)  # (samples,), channels averaged
    return x.astype(np.float32), rate, channels


# ---------------------------------------------------------------------------------------------
# Resampling


def sinc_kernels(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (new, 1, 2*width + orig) for the reduced ratio orig:new, and `width`."""
    base = min(orig, new) * rolloff  # cut-off (x2), in cycles per period of `orig` input samples
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig  # input times (1, K)
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx  # input - output time (new, K)
    t = (t * base).clamp(-zeros, zeros)  # in zero-crossings of the sinc
    window = torch.cos(t * math.pi / (2 * zeros)) ** 2  # Hann over +-zeros
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    return (sinc * window * base / orig)[:, None, :], width  # (new, 1, K)


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """x (..., n) at orig_sr -> (..., ceil(n * new_sr / orig_sr)) at new_sr."""
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    shape, n = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, 1, n).double()  # (B, 1, n)
    target = math.ceil(new * n / orig)
    if orig * new > 4_000_000:
        # rates with a tiny gcd (44101 -> 8000) would need a huge polyphase bank: go through a
        # nearby rate with a large gcd, where the sinc does the band-limiting, then interpolate linearly
        mid = new_sr * max(1, round(orig_sr / new_sr))
        y = resample(x, orig_sr, mid) if orig_sr != mid and math.gcd(orig_sr, mid) > 1 else x
        y = F.interpolate(y.reshape(-1, 1, y.shape[-1]).double(), size=target, mode="linear", align_corners=False)
        return y.reshape(*shape, target).to(x.dtype)
    kernels, width = sinc_kernels(orig, new)
    padded = F.pad(flat, (width, width + orig))
    y = F.conv1d(padded, kernels, stride=orig)  # (B, new phases, periods)
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)[:, :target]  # (B, periods * new) interleaved
    return y.reshape(*shape, target).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Log-mel features


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, peak 1, centres evenly spaced on the HTK mel scale."""
    fmax = fmax or sample_rate / 2
    hz = torch.from_numpy(mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)))  # (n_mels + 2,)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)[:, None]  # (F, 1)
    lo, centre, hi = hz[:-2], hz[1:-1], hz[2:]  # (n_mels,) each
    rise = (freqs - lo) / (centre - lo)
    fall = (hi - freqs) / (hi - centre)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float()  # (F, n_mels)


@dataclass(frozen=True)
class Features:
    sample_rate: int = 8000
    n_fft: int = 256
    win_length: int = 200  # samples (25 ms at 8 kHz)
    hop_length: int = 80  # samples (10 ms at 8 kHz)
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float = 0.0  # 0: sample_rate / 2

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Mono samples (n,) at self.sample_rate -> (frames, n_mels), frames = 1 + n // hop_length."""
        spec = torch.stft(x.float(), self.n_fft, self.hop_length, self.win_length,
                          window=torch.hann_window(self.win_length), center=True, pad_mode="constant",
                          return_complex=True)  # (n_fft // 2 + 1, frames)
        power = spec.abs() ** 2
        fb = mel_filterbank(self.n_fft, self.sample_rate, self.n_mels, self.fmin, self.fmax or None)
        return torch.log(power.T @ fb + 1e-6)  # (frames, n_mels)

    def from_file(self, path, notes: bool = False) -> torch.Tensor:
        """A .wav file -> (frames, n_mels), mixed to mono and resampled as needed."""
        x, rate, channels = read_wav(path)
        if notes and (rate != self.sample_rate or channels != 1):
            print(f"note: {path}: {rate} Hz, {channels} channel(s) -> {self.sample_rate} Hz mono "
                  f"(channels averaged, windowed-sinc resampling)", file=sys.stderr)
        wav = resample(torch.from_numpy(x), rate, self.sample_rate)
        return self.log_mel(wav)


def pad_frames(feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """[(T_i, F)] -> {"x": (B, T_max, F) zero-padded, "lengths": (B,)}."""
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.long)
    x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, :len(f)] = f
    return {"x": x, "lengths": lengths}


# ---------------------------------------------------------------------------------------------
# Archives


def extract_tar(archive: Path, dest: Path) -> Path:
    """Extract a tar archive's regular files into `dest`, once, atomically: into a temporary folder
    beside it, then renamed. Members with absolute paths, '..', links or devices are refused."""
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                name = PurePosixPath(m.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(f"{archive}: refusing the unsafe member path {m.name!r}")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise DataError(f"{archive}: refusing member {m.name!r}, which is a link or a device")
                target = tmp.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        (tmp / ".complete").write_text(str(archive.name))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / ".complete").is_file():  # not a concurrent extraction that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: not a readable tar archive ({e}); delete it from the cache to fetch it again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------------------------------------
# Free Spoken Digit Dataset


@dataclass(frozen=True)
class SpeechConfig:
    sample_rate: int = 8000
    n_mels: int = 40
    n_fft: int = 256
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 0.0
    fmax: float = 0.0  # 0: sample_rate / 2

    def __post_init__(self):
        check(self.sample_rate >= 1000, "[data] sample_rate", f"must be >= 1000, got {self.sample_rate}")
        check(self.n_mels >= 1, "[data] n_mels", f"must be >= 1, got {self.n_mels}")
        check(self.win_ms > 0 and self.hop_ms > 0, "[data] win_ms / hop_ms", "must be > 0")
        check(self.win_ms * self.sample_rate / 1000 <= self.n_fft, "[data] win_ms",
              f"a {self.win_ms} ms window is {self.win_ms * self.sample_rate / 1000:.0f} samples, more than "
              f"n_fft = {self.n_fft}; raise n_fft or shorten the window")
        check(self.fmax == 0 or self.fmin < self.fmax <= self.sample_rate / 2, "[data] fmax",
              f"must be 0 or in (fmin, sample_rate / 2], got {self.fmax}")

    def features(self) -> Features:
        return Features(self.sample_rate, self.n_fft, round(self.win_ms * self.sample_rate / 1000),
                        round(self.hop_ms * self.sample_rate / 1000), self.n_mels, self.fmin, self.fmax)


NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class FSDD(DatasetSpec):
    Config = SpeechConfig
    files = (RemoteFile("fsdd/fsdd-recordings.tar.gz",
                        "46e8dfae782aa41458466a310ac96d0dd8b8269a28ac73196a07ec3608d7e5b7", 15560336),)
    license = "CC BY-SA 4.0 (Zohar Jackson and contributors)"
    description = "Free Spoken Digit Dataset: spoken digits 0-9, 6 speakers, 8 kHz wav, as log-mel spectrograms"
    splits = "train 2,700 (recordings 5-49; val carved from it) / test 300 (recordings 0-4, the official split)"

    def recordings(self) -> list[Path]:
        f = self.files[0]
        archive = fetch(f.path, f.sha256, dataset="fsdd")
        root = extract_tar(archive, cached_path(f"fsdd/extracted-{f.sha256[:12]}"))
        wavs = sorted(p for p in root.rglob("*.wav") if NAME.match(p.name))
        if len(wavs) != 3000:
            raise DataError(f"{root}: expected 3000 recordings named DIGIT_SPEAKER_INDEX.wav, found {len(wavs)}; "
                            f"delete that folder to extract the archive again")
        return wavs

    def load(self, data_cfg, opts: SpeechConfig) -> DataBundle:
        feats_cfg = opts.features()
        wavs = self.recordings()
        meta = [NAME.match(p.name).groups() for p in wavs]
        digit = np.array([int(d) for d, _, _ in meta])
        speakers = sorted({s for _, s, _ in meta})
        speaker = np.array([speakers.index(s) for _, s, _ in meta])
        test_mask = np.array([int(i) <= 4 for _, _, i in meta])
        feats = [feats_cfg.from_file(p) for p in wavs]

        pool = np.flatnonzero(~test_mask)
        kept, held = S.hold_out(speaker[pool] * 10 + digit[pool], data_cfg.val_fraction, data_cfg.split_seed)
        train_idx = pool[S.training_subset(kept, digit[pool], data_cfg)]
        val_idx, test_idx = pool[held], np.flatnonzero(test_mask)

        frames = torch.cat([feats[i] for i in train_idx])  # (sum T, n_mels)
        mean, std = frames.mean(0), frames.std(0).clamp(min=1e-5)

        def split(idx):
            if len(idx) == 0:
                return None
            batch = pad_frames([(feats[i] - mean) / std for i in idx])
            return TensorSplit({**batch, "y": torch.from_numpy(digit[idx])})

        info = {
            "input": "audio",
            "in_features": opts.n_mels,
            "num_classes": 10,
            "class_names": [str(d) for d in range(10)],
            "features": asdict(feats_cfg),
            "feature_mean": [round(v, 6) for v in mean.tolist()],
            "feature_std": [round(v, 6) for v in std.tolist()],
            "speakers": speakers,
        }
        return DataBundle(train=split(train_idx), val=split(val_idx), test=split(test_idx), info=info)

    def encode_inputs(self, inputs, info, run_dir):
        feats_cfg = Features(**info["features"])
        mean, std = torch.tensor(info["feature_mean"]), torch.tensor(info["feature_std"])
        out = []
        for s in inputs:
            p = Path(s)
            if p.suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"{s}: an image was given to a speech model; give the path of a .wav recording")
            if not p.is_file():
                raise DataError(f"{s!r} is not a file; this is a speech model: give the path of a .wav recording, "
                                f"e.g. strata predict RUN_DIR seven.wav")
            out.append((feats_cfg.from_file(p, notes=True) - mean) / std)
        return pad_frames(out)


DATASETS.register("fsdd", FSDD())


__all__ = ["read_wav", "resample", "sinc_kernels", "mel_filterbank", "hz_to_mel", "mel_to_hz", "Features",
           "pad_frames", "extract_tar", "FSDD"]
