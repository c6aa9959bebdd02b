"""Request payloads -> files the server owns: each malformed item is refused naming it, and messages
about a request's files name the request's items, never where the server keeps them."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pytest
from PIL import Image

from strata.serve import inputs as I


@pytest.fixture
def files():
    scratch = I.Scratch()
    yield scratch.files()
    scratch.remove()
    assert not scratch.root.exists()


def png(size=(5, 4), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_as_base64_or_data_url_is_written_and_redacted(files):
    raw = png()
    a = I.image_file(base64.b64encode(raw).decode(), "inputs[0]", files, 0)
    b = I.image_file("data:image/png;base64," + base64.b64encode(raw).decode(), "inputs[1]", files, 1)
    assert open(a, "rb").read() == raw == open(b, "rb").read()
    assert files.redact(f"{b}: cannot read it") == "inputs[1]: cannot read it"
    files.remove()
    assert not any(p.exists() for p in files.paths)


@pytest.mark.parametrize("value,phrase", [
    (7, "base64 string"), ("not base64!", "not valid base64"), ("", "empty"),
    (base64.b64encode(b"GIF89a" + bytes(40)).decode(), "not a PNG or JPEG"),
    (base64.b64encode(png()[:30]).decode(), "cannot be decoded"),
])
def test_a_bad_image_names_its_item(files, value, phrase):
    with pytest.raises(I.BadInput, match=phrase) as e:
        I.image_file(value, "inputs[3]", files, 3)
    assert e.value.field == "inputs[3]" and e.value.status == 400 and str(e.value).startswith("inputs[3]: ")


def test_a_table_row_becomes_a_one_row_csv_and_unknown_columns_are_refused(files):
    columns = [{"name": "age"}, {"name": "job"}]
    row = I.table_row({"age": 41, "job": "admin"}, "inputs[0]", columns)
    with open(I.table_file(row, files, 0), newline="") as f:
        assert list(csv.reader(f)) == [["age", "job"], ["41", "admin"]]
    with pytest.raises(I.BadInput) as e:
        I.table_row({"age": 41, "salary": 3}, "inputs[0]", columns)
    assert e.value.field == "inputs[0].salary" and "columns: age, job" in e.value.message
    for bad in ("a,b", "x\ny", True, float("nan"), [1]):
        with pytest.raises(I.BadInput, match=r"inputs\[0\]\.job"):
            I.table_row({"job": bad}, "inputs[0]", columns)


def test_an_array_must_have_the_example_shape(files):
    path = I.array_file([[1, 2], [3, 4]], "inputs[0]", files, 0, [2, 2])
    assert np.load(path).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    for bad, phrase in (([1, 2, 3, 4], "shape"), ([[1, 2], [3]], "ragged"), ("1,2", "nested list"),
                        ([[1, float("inf")], [3, 4]], "non-finite")):
        with pytest.raises(I.BadInput, match=phrase):
            I.array_file(bad, "inputs[0]", files, 0, [2, 2])


def test_a_sentence_is_text_within_bounds():
    assert I.text_item("a fine film", "inputs[0]") == "a fine film"
    for bad, phrase in ((3, "sentence"), ("  ", "empty"), ("x" * (I.MAX_TEXT_CHARS + 1), "at most")):
        with pytest.raises(I.BadInput, match=phrase):
            I.text_item(bad, "inputs[0]")


def test_run_names_are_folder_names_made_unique():
    from pathlib import Path

    from strata.serve.runs import run_names, unknown_run

    assert run_names([Path("a/mnist-cnn"), Path("b/mnist-cnn"), Path("lm"), Path("c/mnist-cnn")]) == \
        ["mnist-cnn", "mnist-cnn-2", "lm", "mnist-cnn-3"]
    assert str(unknown_run("mnist_cnn", ["mnist-cnn", "lm"])) == \
        "no run named 'mnist_cnn'; did you mean 'mnist-cnn'? (served: mnist-cnn, lm)"
