"""`strata serve RUN_DIR...`: trained runs behind a JSON API (FastAPI on uvicorn) and a web page.

    from strata.serve import create_app, serve
    app = create_app(["runs/mnist-cnn"])           # an ASGI app, for any ASGI server or a test client
    serve(["runs/mnist-cnn"], port=8000)            # binds 127.0.0.1:8000 until Ctrl-C

Endpoints, limits and error answers: strata/serve/app.py (and the server's own /docs page).
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from strata.errors import StrataError

__all__ = ["create_app", "serve"]

SWITCH_INTERVAL_S = 0.0005


def create_app(run_dirs, *, max_batch: int = 32, max_wait_ms: float = 5.0, batching: bool = True,
               device: str | None = None, max_body_bytes: int = 10 * 2**20, max_items: int = 64,
               timeout_s: float = 30.0):
    """The FastAPI app serving the runs in `run_dirs`; each is loaded now (a StrataError names a folder
    that is not a readable run)."""
    from strata.device import pick_device
    from strata.serve.app import Limits, Runs, build_app
    from strata.serve.batching import Batcher
    from strata.serve.runs import ServedRun, run_names

    for name, value, low in (("max_batch", max_batch, 1), ("max_items", max_items, 1),
                             ("max_body_bytes", max_body_bytes, 1024), ("timeout_s", timeout_s, 0.001),
                             ("max_wait_ms", max_wait_ms, 0)):
        if not value >= low:
            raise StrataError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if not run_dirs:
        raise StrataError("give at least one run folder to serve: strata serve RUN_DIR")
    dev = pick_device(device or "auto")
    dirs = [Path(d) for d in run_dirs]
    runs = []
    for name, d in zip(run_names(dirs), dirs):
        if not d.is_dir():
            raise StrataError(f"{d}: not a folder; give the folder of a trained run (strata train ... --run-dir DIR)")
        try:
            run = ServedRun.load(name, d, dev)
        except OSError as e:
            raise StrataError(f"{d}: cannot read this run folder ({e.strerror or e})") from None
        run.batcher = Batcher(run.predict, run.executor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                              enabled=batching)
        runs.append(run)
    limits = Limits(max_body_bytes=max_body_bytes, max_items=max_items, timeout_s=timeout_s, max_batch=max_batch,
                    batching=batching)
    return build_app(Runs(runs, limits))


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket, or a StrataError a person can act on (port taken, no such address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except socket.gaierror as e:
        raise StrataError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    except OSError as e:
        raise StrataError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port") from None
    sock.set_inheritable(True)
    return sock


def serve(run_dirs, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, max_wait_ms: float = 5.0,
          batching: bool = True, device: str | None = None, max_body_bytes: int = 10 * 2**20, max_items: int = 64,
          timeout_s: float = 30.0, threads: int | None = None) -> None:
    """Serve the runs until Ctrl-C (uvicorn then re-raises the interrupt: the CLI exits 130)."""
    import torch
    import uvicorn

    if threads is not None:
        if threads < 1:
            raise StrataError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    app = create_app(run_dirs, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching, device=device,
                     max_body_bytes=max_body_bytes, max_items=max_items, timeout_s=timeout_s)
    sock = listen(host, port)
    # The event loop and the runs' worker threads take turns holding the GIL; Python's default turn
    # (5 ms) would stall a request's few microseconds of work behind a batch's Python code.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.basicConfig(format="strata serve: %(levelname)s: %(message)s")
    shown = f"[{host}]" if ":" in host else host
    port = sock.getsockname()[1]
    names = ", ".join(app.state.runs.by_name)
    print(f"strata serve: {names} at http://{shown}:{port}/ (API: http://{shown}:{port}/docs; "
          f"batching {'on' if batching else 'off'}, {torch.get_num_threads()} torch thread(s)); Ctrl-C stops",
          flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"strata serve: warning: listening on {host}: other machines can reach this server", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
