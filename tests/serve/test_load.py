"""`strata serve` under load and under abuse, on loopback: 8 concurrent clients x 200 requests with
zero errors, p50 / p99 latency printed and resident memory growing < 10 %; then a run of malformed
requests, each a 4xx, after which the server still answers correctly."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import mnist_digit, running_server, spoken_digit

CLIENTS, REQUESTS = 8, 200
PREDICT = "/runs/mnist-cnn/predict"
JSON = {"content-type": "application/json"}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS, in KiB)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def server(mnist_cnn_run, tiny_runs, tmp_path_factory):
    """mnist-cnn and fsdd, writing request files into a temporary folder of their own (TMPDIR)."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    with running_server([mnist_cnn_run, tiny_runs["fsdd"]], env={"TMPDIR": str(tmp)}) as (url, proc):
        proc.tmp = tmp
        yield url, proc
    assert proc.returncode in (0, 130) and "Traceback" not in proc.output, proc.output
    assert os.listdir(tmp) == []  # the scratch folder goes with the server


@pytest.fixture(scope="module")
def digits(server):
    """16 MNIST test digits: request bodies, and each one's answer when sent alone."""
    url, _ = server
    bodies = [json.dumps({"inputs": [b64(mnist_digit(i)[0])]}).encode() for i in range(16)]
    with httpx.Client(base_url=url, timeout=60) as c:
        answers = [c.post(PREDICT, content=b, headers=JSON).json()["predictions"][0] for b in bodies]
    return bodies, answers


def request_files(proc) -> list[str]:
    """The files in the server's scratch folder (one folder in its TMPDIR, made at start)."""
    folders = os.listdir(proc.tmp)
    assert len(folders) == 1 and folders[0].startswith("strata-serve-"), folders
    return os.listdir(proc.tmp / folders[0])


def hammer(url: str, bodies: list[bytes], clients: int, requests: int) -> tuple[list[float], list[tuple]]:
    """`clients` threads each sending `requests` predicts in turn; (latencies in s, (body index, response))."""
    latencies: list[float] = []
    answers: list[tuple] = []
    lock = threading.Lock()

    def client(k: int):
        mine, got = [], []
        with httpx.Client(base_url=url, timeout=60) as c:
            for j in range(requests):
                i = (k * requests + j) % len(bodies)
                t0 = time.perf_counter()
                try:
                    r = c.post(PREDICT, content=bodies[i], headers=JSON)
                    got.append((i, r.status_code, r.json()))
                except (httpx.HTTPError, ValueError) as e:
                    got.append((i, None, repr(e)))
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            answers.extend(got)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, answers


def test_8_clients_x_200_requests_no_errors_bounded_memory(server, digits):
    url, proc = server
    bodies, expected = digits
    hammer(url, bodies, CLIENTS, 40)  # warm-up: allocator pools and batch shapes reach their steady state
    before = rss_kib(proc.pid)
    t0 = time.perf_counter()
    latencies, answers = hammer(url, bodies, CLIENTS, REQUESTS)
    wall = time.perf_counter() - t0
    after = rss_kib(proc.pid)
    errors = [(i, status, body) for i, status, body in answers if status != 200]
    assert not errors, errors[:3]
    assert len(answers) == CLIENTS * REQUESTS
    for i, _, body in answers:  # batched with others or not, each digit gets its own answer
        got, want = body["predictions"][0], expected[i]
        assert got["label"] == want["label"] and abs(got["probability"] - want["probability"]) < 1e-4
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    growth = after / before - 1
    print(f"\n{CLIENTS} clients x {REQUESTS} requests: {len(answers) / wall:.0f} requests/s, p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, server RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB ({growth:+.1%})")
    assert growth < 0.10, (before, after)
    served = httpx.get(f"{url}/info").json()["runs"][0]["served"]
    assert served["items"] / served["batches"] > 2, served  # 8 clients at once: their requests were batched
    assert request_files(proc) == []


def test_malformed_requests_are_4xx_and_the_server_keeps_answering(server, digits, tmp_path):
    url, proc = server
    bodies, expected = digits
    png = mnist_digit(0)[0]
    (tmp_path / "digit.png").write_bytes(png)
    wav, _ = spoken_digit(0)
    rng = np.random.default_rng(0)
    junk = rng.bytes(2000)

    def predict(items, run="mnist-cnn"):
        return {"url": f"/runs/{run}/predict", "json": {"inputs": items}}

    cases = {
        "random bytes as an image": (predict([b64(junk)]), 400, "inputs[0]"),
        "random bytes behind a PNG signature": (predict([b64(png[:8] + junk)]), 400, "inputs[0]"),
        "a truncated PNG": (predict([b64(png[: len(png) // 2])]), 400, "inputs[0]"),
        "a truncated wav": (predict([b64(wav[:30])], "fsdd"), 400, "inputs[0]"),
        "a wav cut inside its header": (predict([b64(wav[:44] + b"\x00")], "fsdd"), 400, "inputs[0]"),
        "an image to the speech model": (predict([b64(png)], "fsdd"), 400, "inputs[0]"),
        "a path on the server's disk": (predict([str(tmp_path / "digit.png")]), 400, "inputs[0]"),
        "a 20 MB JSON body": ({"url": PREDICT, "content": b'{"inputs": ["' + b"A" * (20 * 2**20) + b'"]}',
                               "headers": JSON}, 413, "body"),
        "text/plain": ({"url": PREDICT, "content": bodies[0], "headers": {"content-type": "text/plain"}}, 415,
                       "content-type"),
        "form data": ({"url": PREDICT, "content": b"inputs=1",
                       "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "content-type"),
        "no content type": ({"url": PREDICT, "content": bodies[0], "headers": {"content-type": ""}}, 415,
                            "content-type"),
        "an unknown field": ({"url": PREDICT, "json": {"inputs": [b64(png)], "batch": 4}}, 400, "batch"),
        "inputs as a string": ({"url": PREDICT, "json": {"inputs": b64(png)}}, 400, "inputs"),
        "a number as an image": (predict([7]), 400, "inputs[0]"),
        "an object as an image": (predict([{"png": b64(png)}]), 400, "inputs[0]"),
        "a JSON array body": ({"url": PREDICT, "json": [b64(png)]}, 400, "body"),
        "broken JSON": ({"url": PREDICT, "content": b'{"inputs": [', "headers": JSON}, 400, "body"),
        "bytes that are not UTF-8": ({"url": PREDICT, "content": b"\xff\xfe\x00{", "headers": JSON}, 400, "body"),
        "JSON nested 100,000 deep": ({"url": PREDICT, "content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON},
                                     400, "body"),
        "too many items": (predict([b64(png)] * 65), 400, "inputs"),
        "no items": (predict([]), 400, "inputs"),
    }
    failures = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for what, (request, status, field) in cases.items():
            r = c.post(**request)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
            if r.status_code != status or not isinstance(body, dict) or body.get("field") != field:
                failures.append((what, r.status_code, body))
            assert proc.poll() is None, f"the server died on {what}"
        assert not failures, failures
        for i in (0, 5):  # still right afterwards
            assert c.post(PREDICT, content=bodies[i], headers=JSON).json()["predictions"][0] == expected[i]
        assert c.get("/health").json() == {"status": "ok", "runs": 2}
    assert request_files(proc) == []  # every request's files were removed
