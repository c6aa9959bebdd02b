"""Throughput of `strata serve` at 16 concurrent clients, dynamic batching on vs off, on the MNIST CNN.

    OMP_NUM_THREADS=1 STRATA_DATA_MIRROR=../shared/datasets python benchmarks/serve.py [--run RUN_DIR]

Two servers run side by side on loopback (`--max-batch 32 --max-wait-ms 5` and `--no-batching`), each
with one torch thread; rounds alternate between them (so load from other jobs on the machine falls on
both alike), and the medians are compared. Each request is one real MNIST test digit as PNG bytes,
the answer is checked. The clients are plain HTTP/1.1 keep-alive connections on asyncio in this
process (a few microseconds of work per request), so the figure is the server's.

Without --run, recipes/mnist-cnn.toml is trained for one step into a temporary folder: the speed of a
forward pass does not depend on the weights, and the folder is a real run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "serve"))


async def client(port: int, bodies: list[bytes], until: float, counts: list[int], latencies: list[float], k: int):
    """One keep-alive connection sending predicts back to back until `until`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = k
    try:
        while time.perf_counter() < until:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            writer.write(b"POST /predict HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200") or b'"predictions"' not in answer:
                raise RuntimeError(f"bad answer: {head[:40]!r} {answer[:200]!r}")
            latencies.append(time.perf_counter() - t0)
            counts[0] += 1
    finally:
        writer.close()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple[float, float, int]:
    """(requests per second, median latency in ms, requests) of `clients` connections for `seconds`."""
    counts, latencies = [0], []
    t0 = time.perf_counter()
    until = t0 + seconds
    await asyncio.gather(*(client(port, bodies, until, counts, latencies, k) for k in range(clients)))
    return counts[0] / (time.perf_counter() - t0), statistics.median(latencies) * 1000, counts[0]


def measure(port: int, pid: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    cpu0 = cpu_s(pid)
    rps, ms, n = asyncio.run(round_(port, bodies, clients, seconds))
    return {"rps": rps, "ms": ms, "cpu_ms": (cpu_s(pid) - cpu0) / n * 1000}


def mean_batch(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info") as r:
        served = json.load(r)["runs"][0]["served"]
    return served["items"] / max(1, served["batches"])


def forward_costs(run: Path, pngs: list[bytes], folder: Path, repeats: int = 30) -> dict[str, float]:
    """What bounds batching on a CPU: ms per image of encode_inputs and of the forward pass, alone and
    16 at a time, in this process on one torch thread."""
    import torch

    from strata.api import load_run
    from strata.data import DATASETS

    torch.set_num_threads(1)
    loaded = load_run(run, device="cpu")
    spec = DATASETS.get(loaded.cfg.data.name)
    paths = []
    for i, png in enumerate(pngs[:16]):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(png)

    def per_image(fn, n: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats / n * 1000

    out = {"encode": per_image(lambda: spec.encode_inputs([str(p) for p in paths], loaded.info, run), 16)}
    batch = spec.encode_inputs([str(p) for p in paths], loaded.info, run)
    with torch.no_grad():
        for n in (1, 16):
            x = {"x": batch["x"][:n]}
            out[f"forward_{n}"] = per_image(lambda: loaded.task.predict_step(x), n)
    return out


def tiny_run(folder: Path) -> Path:
    from strata.api import train

    train(REPO / "recipes" / "mnist-cnn.toml", ["trainer.max_steps=1", "data.limit=256", "trainer.progress=off",
                                                "trainer.sanity_val_batches=0"], run_dir=folder / "mnist-cnn",
          device="cpu")
    return folder / "mnist-cnn"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a trained MNIST CNN run folder (default: one step of recipes/mnist-cnn.toml)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="rounds per server, alternating")
    p.add_argument("--seconds", type=float, default=6.0, help="length of a round")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    a = p.parse_args()

    import torch
    from conftest import mnist_digit, running_server

    pngs = [mnist_digit(i)[0] for i in range(64)]
    bodies = [json.dumps({"inputs": [base64.b64encode(png).decode()]}).encode() for png in pngs]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(a.run) if a.run else tiny_run(Path(tmp))
        costs = forward_costs(run, pngs, Path(tmp))
        on_args = ("--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms))
        with running_server([run], *on_args) as (on_url, on), running_server([run], "--no-batching") as (off_url, off):
            servers = {"on": (int(on_url.rsplit(":", 1)[1]), on.pid), "off": (int(off_url.rsplit(":", 1)[1]), off.pid)}
            for port, pid in servers.values():  # warm-up
                measure(port, pid, bodies, a.clients, 1.0)
            results: dict[str, list[dict]] = {"on": [], "off": []}
            for r in range(a.rounds):
                for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    m = measure(*servers[mode], bodies, a.clients, a.seconds)
                    results[mode].append(m)
                    print(f"round {r + 1} batching {mode:>3}: {m['rps']:7.1f} requests/s, median latency "
                          f"{m['ms']:6.1f} ms, server CPU {m['cpu_ms']:.2f} ms/request", flush=True)
            batch = mean_batch(servers["on"][0])
    med = {mode: {k: statistics.median(m[k] for m in v) for k in ("rps", "ms", "cpu_ms")}
           for mode, v in results.items()}
    print(f"\n{a.clients} clients, MNIST CNN, 1 torch thread, torch {torch.__version__}, medians of {a.rounds} rounds:")
    for mode, what in (("on", f"batching on (max batch {a.max_batch}, wait {a.max_wait_ms:g} ms)"),
                       ("off", "batching off")):
        m = med[mode]
        print(f"  {what}: {m['rps']:.1f} requests/s, median latency {m['ms']:.1f} ms, "
              f"server CPU {m['cpu_ms']:.2f} ms/request" + (f", mean batch {batch:.1f}" if mode == "on" else ""))
    print(f"  ratio on / off: {med['on']['rps'] / med['off']['rps']:.2f}x throughput, "
          f"{med['off']['cpu_ms'] / med['on']['cpu_ms']:.2f}x less CPU per request")
    print(f"  per image, in process: encode_inputs {costs['encode']:.2f} ms, forward pass {costs['forward_1']:.2f} ms "
          f"alone vs {costs['forward_16']:.2f} ms 16 at a time")


if __name__ == "__main__":
    main()
