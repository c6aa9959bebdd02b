"""Request payloads -> what a data set's `encode_inputs` reads, without ever opening a path a request names.

Binary inputs (images, recordings) arrive as base64 text (or `data:...;base64,` URLs), table rows as
objects, arrays as nested lists. Each is checked here (decodable, of the right kind, within the limits),
then written into a folder the server owns (Scratch), and only those files' paths reach
`encode_inputs`; text runs get the sentences themselves. A bad item raises BadInput naming it
(`inputs[2]`), which the app answers with a 400.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# The kinds of item a served run's predict takes (GET /info "input").
INPUT_KINDS = ("image", "text", "audio", "table", "timeseries", "array", "ratings", "none")
MAX_TEXT_CHARS = 10_000
MAX_IMAGE_PIXELS = 16_000_000  # a decompression bomb is refused before it is decoded
DATA_URL = re.compile(r"^data:([\w.+/-]*)(;[\w=.+-]+)*;base64,", re.IGNORECASE)
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


class BadInput(Exception):
    """A request the server refuses: `status` (400, 404, 413, 415, 504), a message naming the field and the
    fix, and the field (`inputs[0]`, `target`), when one is at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


class Scratch:
    """The folder the server writes request files into: one per server, made once (making and removing a
    folder per request costs milliseconds on some disks; a file costs a tenth of one)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="strata-serve-"))
        self.count = itertools.count()

    def files(self) -> "RequestFiles":
        return RequestFiles(self.root, next(self.count))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class RequestFiles:
    """One request's files in the scratch folder, named by the request's number; `remove()` deletes them."""

    def __init__(self, root: Path, number: int):
        self.root, self.number = root, number
        self.paths: list[Path] = []

    def path(self, index: int, suffix: str) -> Path:
        p = self.root / f"{self.number}-{index}{suffix}"
        self.paths.append(p)
        return p

    def redact(self, message: str) -> str:
        """A message about these files, naming each as the request item it came from (`inputs[2]`)
        instead of where the server keeps it."""
        for p in self.paths:
            message = message.replace(str(p), f"inputs[{p.stem.split('-')[1]}]")
        return message

    def remove(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)


def _kind_of(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "text", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def decode_base64(value: Any, field: str, what: str) -> bytes:
    """The bytes of a base64 string or a `data:<type>;base64,` URL."""
    if not isinstance(value, str):
        raise BadInput(f"{field}: expected {what} as a base64 string (or a data: URL), got {_kind_of(value)}", field)
    text = DATA_URL.sub("", value.strip(), count=1)
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{field}: not valid base64; send {what} base64-encoded (or as a data: URL)", field) from None
    if not raw:
        raise BadInput(f"{field}: empty; send the bytes of {what}", field)
    return raw


def image_file(value: Any, field: str, files: RequestFiles, index: int) -> str:
    """A PNG or JPEG from base64, checked with Pillow (fully decoded, size-limited), saved as a request file."""
    from PIL import Image, UnidentifiedImageError

    raw = decode_base64(value, field, "a PNG or JPEG image")
    if not raw.startswith((PNG_MAGIC, JPEG_MAGIC)):
        raise BadInput(f"{field}: not a PNG or JPEG image (random bytes?); send the file's bytes base64-encoded",
                       field)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise BadInput(f"{field}: {w}x{h} pixels is more than the {MAX_IMAGE_PIXELS:,} this server decodes; "
                               "send a smaller image", field)
            img.load()  # a truncated or corrupt file fails here, not later inside the batch
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadInput(f"{field}: the image cannot be decoded ({e}); is the file complete?", field) from None
    path = files.path(index, '.png' if raw.startswith(PNG_MAGIC) else '.jpg')
    path.write_bytes(raw)
    return str(path)


def wav_file(value: Any, field: str, files: RequestFiles, index: int) -> str:
    """A .wav recording from base64, checked with the reader training used, saved as one of the request's files."""
    from strata.data.audio import read_wav
    from strata.errors import DataError

    raw = decode_base64(value, field, "a .wav recording")
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise BadInput(f"{field}: not a .wav file (no RIFF/WAVE header); send a PCM .wav recording", field)
    path = files.path(index, ".wav")
    path.write_bytes(raw)
    try:
        read_wav(path)
    except DataError as e:
        raise BadInput(f"{field}: {str(e).replace(str(path), 'the recording')}", field) from None
    return str(path)


def text_item(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{field}: expected a sentence (text), got {_kind_of(value)}", field)
    if not value.strip():
        raise BadInput(f"{field}: an empty sentence; give at least one word", field)
    if len(value) > MAX_TEXT_CHARS:
        raise BadInput(f"{field}: {len(value):,} characters; at most {MAX_TEXT_CHARS:,} per sentence", field)
    return value


def _cell(value: Any, field: str) -> str:
    """One table cell as CSV text: a number or a short string, never a separator or a line break."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{field}: expected a number or a category name, got {_kind_of(value)}", field)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{field}: must be a finite number, got {value}", field)
    text = str(value).strip()
    if any(ch in text for ch in ",\r\n\"") or len(text) > 200:
        raise BadInput(f"{field}: {text[:40]!r} holds a comma, quote or line break (or is over 200 characters); "
                       "send the plain value", field)
    return text


def table_row(value: Any, field: str, columns: list[dict]) -> dict[str, str]:
    """An object {column: value} checked against the run's columns (unknown names refused)."""
    if not isinstance(value, dict):
        raise BadInput(f"{field}: expected an object {{column: value}}, got {_kind_of(value)}", field)
    known = [c["name"] for c in columns]
    unknown = [k for k in value if k not in known]
    if unknown:
        raise BadInput(f"{field}.{unknown[0]}: not a column of this model; columns: {', '.join(known)}",
                       f"{field}.{unknown[0]}")
    return {k: _cell(v, f"{field}.{k}") for k, v in value.items()}


def table_file(row: dict[str, str], files: RequestFiles, index: int, delimiter: str = ",") -> str:
    """A one-row CSV (header, then the row) that `encode_inputs` of a CSV table reads."""
    path = files.path(index, ".csv")
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(row.keys())
        w.writerow(row.values())
    return str(path)


def timeseries_file(value: Any, field: str, files: RequestFiles, index: int) -> str:
    """CSV text (a header with the input columns, then rows) saved as a .csv file."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{field}: expected CSV text (a header row naming the input columns, then one row per hour), "
                       f"got {_kind_of(value) if not isinstance(value, str) else 'empty text'}", field)
    path = files.path(index, ".csv")
    path.write_text(value, encoding="utf-8")
    return str(path)


def array_file(value: Any, field: str, files: RequestFiles, index: int, shape: list[int] | None) -> str:
    """A nested list of numbers shaped like one example, saved as .npy."""
    try:
        x = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadInput(f"{field}: expected a nested list of numbers (shape {shape}), got a ragged list or "
                       "non-numbers", field) from None
    if isinstance(value, (str, bytes, dict)) or x.ndim == 0:
        raise BadInput(f"{field}: expected a nested list of numbers shaped {shape}, got {_kind_of(value)}", field)
    if shape is not None and list(x.shape) != list(shape):
        raise BadInput(f"{field}: shape {list(x.shape)}, the model takes one example of shape {list(shape)}", field)
    if not np.isfinite(x).all():
        raise BadInput(f"{field}: holds a non-finite number (NaN or infinity)", field)
    path = files.path(index, ".npy")
    np.save(path, x, allow_pickle=False)
    return str(path)
