"""`strata serve` over real HTTP on loopback: answers equal the CLI's (`strata predict / explain /
generate --json`), streaming joins to the same text, image generators return PNGs, and every error
case of the API gives its status and a message naming the field."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import pytest
from conftest import REPO, mnist_digit, run_coroutine, running_server, spoken_digit
from PIL import Image

from strata.evaluate import explain_run, predict_run, recommend_run

DIGITS = range(8)  # MNIST test images 0..7: labels 7 2 1 0 4 1 4 9


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def png_of(data_url: str) -> Image.Image:
    head, _, payload = data_url.partition(",")
    assert head == "data:image/png;base64"
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img


def as_printed(obj):
    """`obj` as the CLI's --json prints it and a client reads it back."""
    return json.loads(json.dumps(obj, default=str))


def cli_json(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "strata", *args, "--json"], cwd=REPO, capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process(app, calls):
    """Run `calls(client)` against the ASGI app itself (lifespan included); returns what it returns."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://served") as c:
                return await calls(c)

    return run_coroutine(main())


@pytest.fixture(scope="module")
def server(mnist_cnn_run, tiny_runs):
    with running_server([mnist_cnn_run, *tiny_runs.values()], "--max-items", "16") as (url, proc):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, proc
    assert proc.returncode in (0, 130), proc.output  # Ctrl-C stops it cleanly
    assert "Traceback" not in proc.output, proc.output
    assert "at http://127.0.0.1:" in proc.output  # loopback unless told otherwise, and it says where


@pytest.fixture(scope="module")
def client(server):
    return server[0]


def test_predict_on_real_digits_equals_strata_predict_json(client, mnist_cnn_run, tmp_path):
    pngs, labels, paths = [], [], []
    for i in DIGITS:
        png, label = mnist_digit(i)
        pngs.append(b64(png))
        labels.append(label)
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png)
    items = pngs[:4] + ["data:image/png;base64," + p for p in pngs[4:]]  # both forms
    r = client.post("/runs/mnist-cnn/predict", json={"inputs": items})
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]
    assert served == cli_json("predict", str(mnist_cnn_run), *map(str, paths))["predictions"]
    correct = sum(p["label"] == str(y) for p, y in zip(served, labels))
    assert correct >= 6, (served, labels)  # one epoch on 3,000 images: ~82 % test accuracy


def test_info_describes_each_run_and_the_limits(client):
    info = client.get("/info").json()
    runs = {r["name"]: r for r in info["runs"]}
    assert list(runs) == ["mnist-cnn", "lm", "gan", "table", "ml", "fsdd", "sst"]
    cnn = runs["mnist-cnn"]
    assert (cnn["task"], cnn["input"], cnn["actions"]) == ("classify", "image", ["predict", "explain"])
    assert cnn["class_names"] == [str(i) for i in range(10)]
    assert cnn["image"] == {"channels": 1, "height": 28, "width": 28} and cnn["input_shape"] == [1, 28, 28]
    assert (runs["lm"]["input"], runs["lm"]["actions"]) == ("none", ["generate", "stream"])
    assert runs["lm"]["generate"]["kind"] == "text" and runs["lm"]["generate"]["defaults"]["max_new_tokens"] <= 2000
    gan = runs["gan"]["generate"]
    assert (gan["kind"], gan["conditional"], gan["class_names"]) == ("image", True, [str(i) for i in range(10)])
    assert (runs["ml"]["input"], runs["ml"]["actions"]) == ("ratings", ["recommend"])
    assert (runs["fsdd"]["input"], runs["fsdd"]["actions"][0]) == ("audio", "predict")
    assert info["limits"] == {"max_body_bytes": 10 * 2**20, "max_items": 16, "timeout_s": 30.0, "max_batch": 32,
                              "batching": True}
    assert client.get("/health").json() == {"status": "ok", "runs": 7}
    assert "/runs/{name}/predict" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs/swagger-ui-bundle.js" in docs.text
    assert "https://" not in docs.text and "http://" not in docs.text  # nothing from a CDN: works offline
    js = client.get("/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and len(js.content) > 1e5
    assert client.get("/docs/config.py").status_code == 404  # two fixed files, no path from the request
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_explain_returns_the_cli_explanation_and_a_heatmap_png(client, mnist_cnn_run, tmp_path):
    png, _ = mnist_digit(0)
    (tmp_path / "d.png").write_bytes(png)  # the CLI reads files; the server gets the bytes
    r = client.post("/runs/mnist-cnn/explain", json={"inputs": [b64(png)], "target": "7", "steps": 16})
    assert r.status_code == 200, r.text
    got = r.json()
    cli = as_printed(explain_run(mnist_cnn_run, [str(tmp_path / "d.png")], target="7", steps=16,
                                 out=tmp_path / "h.png", device="cpu"))[0]  # what `strata explain --json` prints
    want = {k: v for k, v in cli.items() if k not in ("input", "out")}
    assert got["explanations"] == [{"input": "inputs[0]", **want}]
    heat = png_of(got["heatmap"])
    assert heat.size == Image.open(tmp_path / "h.png").size  # the same grid the CLI writes


def test_streamed_pieces_join_to_the_generated_text(client):
    request = {"prompt": "ROMEO:", "max_new_tokens": 60, "seed": 5, "temperature": 0.9}
    whole = client.post("/runs/lm/generate", json=request)
    assert whole.status_code == 200, whole.text
    pieces, done = [], None
    with client.stream("POST", "/runs/lm/generate/stream", json=request) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "text" in event:
                    pieces.append(event["text"])
                else:
                    done = event
    assert done == {"done": True, "seed": 5}
    assert len(pieces) >= 30  # token by token, not one block at the end
    text = whole.json()["text"]
    assert request["prompt"] + "".join(pieces) == text and whole.json()["new_tokens"] == 60
    assert client.post("/runs/lm/generate", json=request).json()["text"] == text  # seeded


def test_image_generator_returns_seeded_pngs_of_the_class(client):
    request = {"n": 4, "class": "3", "seed": 1}
    r = client.post("/runs/gan/generate", json=request)
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got["images"]) == 4 and got["classes"] == [3] and got["seed"] == 1
    assert all(png_of(u).size == (28, 28) for u in got["images"])
    assert png_of(got["grid"]).size[0] > 28
    assert client.post("/runs/gan/generate", json=request).json()["images"] == got["images"]


def test_recommend_equals_the_library_answer(client, tiny_runs):
    r = client.post("/runs/ml/recommend", json={"user": 1, "top": 5})
    assert r.status_code == 200, r.text
    assert r.json() == as_printed(recommend_run(tiny_runs["ml"], {"user": "1", "top": 5}, device="cpu"))
    assert len(r.json()["top"]) == 5


def test_audio_predict_equals_strata_predict(client, tiny_runs, tmp_path):
    wav, name = spoken_digit(0)
    (tmp_path / name).write_bytes(wav)
    r = client.post("/runs/fsdd/predict", json={"inputs": ["data:audio/wav;base64," + b64(wav)]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == as_printed(predict_run(tiny_runs["fsdd"], [str(tmp_path / name)], device="cpu"))


def test_a_sentence_is_classified_as_strata_predict_does_and_explained_token_by_token(client, tiny_runs):
    info = next(r for r in client.get("/info").json()["runs"] if r["name"] == "sst")
    assert info["input"] == "text" and info["actions"] == ["predict", "explain"]
    sentences = ["a gripping, beautifully acted film", "dull and far too long"]
    r = client.post("/runs/sst/predict", json={"inputs": sentences})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == as_printed(predict_run(tiny_runs["sst"], sentences, device="cpu"))
    e = client.post("/runs/sst/explain", json={"inputs": sentences[:1]})
    assert e.status_code == 200, e.text
    tokens = e.json()["explanations"][0]["tokens"]
    assert "".join(t["token"] for t in tokens).replace(" ", "") == sentences[0].replace(" ", "")
    assert "heatmap" not in e.json()


def digit_b64() -> str:
    return b64(mnist_digit(0)[0])


def test_table_rows_equal_strata_predict_and_explain_names_columns(client, tiny_runs):
    info = next(r for r in client.get("/info").json()["runs"] if r["name"] == "table")
    assert info["input"] == "table" and info["class_names"] == ["neg", "pos"]
    assert info["columns"] == [{"name": "x", "type": "number", "choices": None},
                               {"name": "color", "type": "category", "choices": ["blue", "red"]}]
    rows = [{"x": 2.5, "color": "red"}, {"x": -1.75, "color": "blue"}]
    r = client.post("/runs/table/predict", json={"inputs": rows})
    assert r.status_code == 200, r.text
    inline = ["x=2.5,color=red", "x=-1.75,color=blue"]  # the CLI's form of the same rows
    assert r.json()["predictions"] == as_printed(predict_run(tiny_runs["table"], inline, device="cpu"))
    assert [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]  # the rule: pos when x > 0
    e = client.post("/runs/table/explain", json={"inputs": rows[:1]}).json()
    assert "heatmap" not in e and e["explanations"][0]["top"][0]["feature"] == "x"


@pytest.mark.parametrize("path,body,status,field,phrase", [
    ("/runs/mnsit-cnn/predict", {"inputs": []}, 404, "name", "did you mean 'mnist-cnn'"),
    ("/predict", {"inputs": ["x"]}, 400, "name", "serves 7 runs (mnist-cnn, lm, gan, table, ml, fsdd, sst)"),
    ("/runs/mnist-cnn/predict", {"inputs": [b64(b"\x89PNG\r\n\x1a\nnot")]}, 400, "inputs[0]", "cannot be decoded"),
    ("/runs/mnist-cnn/predict", {"inputs": ["DIGIT", 7]}, 400, "inputs[1]", "base64 string"),
    ("/runs/mnist-cnn/predict", {"inputs": ["DIGIT"], "extra": 1}, 400, "extra", "unknown field"),
    ("/runs/mnist-cnn/predict", {"input": ["DIGIT"]}, 400, "inputs", "missing"),
    ("/runs/mnist-cnn/predict", {"inputs": ["DIGIT"] * 17}, 400, "inputs", "at most 16"),
    ("/runs/mnist-cnn/explain", {"inputs": ["DIGIT"], "target": "eleven"}, 400, None, "--target"),
    ("/runs/mnist-cnn/explain", {"inputs": ["DIGIT"], "steps": 10_000}, 400, "steps", "1 to 256"),
    ("/runs/mnist-cnn/generate", {}, 400, "name", "cannot generate"),
    ("/runs/lm/predict", {"inputs": ["hello"]}, 400, "name", "cannot predict"),
    ("/runs/lm/generate", {"max_new_tokens": 5000}, 400, "max_new_tokens", "2000"),
    ("/runs/lm/generate", {"max_new_tokens": "5"}, 400, "max_new_tokens", "valid integer"),
    ("/runs/lm/generate/stream", {"n": 2}, 400, "n", "one text"),
    ("/runs/lm/generate/stream", {"temperature": -1.0}, 400, None, "--temperature"),
    ("/runs/gan/generate", {"n": 17}, 400, "n", "(16)"),
    ("/runs/gan/generate", {"class": "eleven"}, 400, None, "class index 0..9"),
    ("/runs/gan/generate/stream", {}, 400, "name", "cannot stream"),
    ("/runs/ml/recommend", {"user": "1", "top": 0}, 400, "top", "1 to 1000"),
    ("/runs/ml/recommend", {"user": [1]}, 400, "user", "valid string"),
    ("/runs/fsdd/predict", {"inputs": ["DIGIT"]}, 400, "inputs[0]", "not a .wav"),
    ("/runs/table/predict", {"inputs": [{"x": 1, "salary": 2}]}, 400, "inputs[0].salary", "columns: x, color"),
    ("/runs/table/predict", {"inputs": [{"x": [1]}]}, 400, "inputs[0].x", "a number or a category"),
    ("/runs/table/predict", {"inputs": ["x=1,color=red"]}, 400, "inputs[0]", "an object"),
])
def test_each_error_names_its_field(client, path, body, status, field, phrase):
    body = json.loads(json.dumps(body).replace('"DIGIT"', json.dumps(digit_b64())))
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    got = r.json()
    assert set(got) == {"error", "field"} and got["field"] == field and phrase in got["error"], got


def test_transport_errors(client):
    r = client.post("/runs/mnist-cnn/predict", content=b"{}", headers={"content-type": "text/plain"})
    assert (r.status_code, r.json()["field"]) == (415, "content-type")
    r = client.post("/runs/mnist-cnn/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["field"]) == (400, "body")
    r = client.post("/runs/mnist-cnn/predict", json=[1, 2])
    assert (r.status_code, r.json()["field"]) == (400, "body")
    r = client.get("/no/such/route")
    assert (r.status_code, r.json()["field"]) == (404, "path")
    assert client.get("/runs/mnist-cnn/predict").status_code == 405


def test_one_run_answers_without_its_name(mnist_cnn_run):
    from strata.serve import create_app

    app = create_app([mnist_cnn_run], batching=False, device="cpu")

    async def calls(c):
        body = {"inputs": [digit_b64()]}
        return (await c.post("/predict", json=body), await c.post("/runs/mnist-cnn/predict", json=body),
                await c.get("/info"))

    short, named, info = in_process(app, calls)
    assert short.status_code == 200 and short.json() == named.json()
    assert info.json()["limits"]["batching"] is False and info.json()["runs"][0]["served"]["batches"] == 2


def test_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "strata", "serve", str(tmp_path), "--port", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert str(tmp_path) in out.stderr and "Traceback" not in out.stderr


def test_a_request_past_the_timeout_is_a_504_and_the_next_is_answered(mnist_cnn_run):
    """A 1 ms timeout is shorter than the batcher's 5 ms wait."""
    from strata.serve import create_app

    app = create_app([mnist_cnn_run], timeout_s=0.001, device="cpu")
    body = {"inputs": [digit_b64()]}

    async def calls(c):
        late = await c.post("/predict", json=body)
        app.state.runs.limits = app.state.runs.limits.__class__(timeout_s=30.0)
        return late, await c.post("/predict", json=body)

    late, on_time = in_process(app, calls)
    assert late.status_code == 504 and "timeout" in late.json()["error"], late.text
    assert on_time.status_code == 200 and on_time.json()["predictions"][0]["label"] == "7"


def test_a_bug_is_a_short_500_logged_on_the_server(mnist_cnn_run, caplog):
    from strata.serve import create_app

    app = create_app([mnist_cnn_run], device="cpu")
    run = app.state.runs.by_name["mnist-cnn"]
    predict = run.batcher.run

    def broken(items):
        if len(items) == 2:
            raise RuntimeError("tensor shapes do not match (a stand-in bug)")
        return predict(items)

    run.batcher.run = broken

    async def calls(c):
        return (await c.post("/predict", json={"inputs": [digit_b64()] * 2}),
                await c.post("/predict", json={"inputs": [digit_b64()]}))

    bug, fine = in_process(app, calls)
    assert bug.status_code == 500 and bug.json() == {
        "error": "internal error: a bug in strata, not in your request (logged on the server)", "field": None}
    assert "stand-in bug" in caplog.text and "Traceback" in caplog.text  # the server's log has it all
    assert fine.status_code == 200 and fine.json()["predictions"][0]["label"] == "7"
