"""The dynamic batcher on its own: concurrent requests share one call, batches respect max_batch,
a failing batch is rerun request by request so only the bad one fails, and batching off means one
call per request; every call runs in the worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_coroutine

from strata.errors import StrataError
from strata.serve.batching import Batcher


class Recorder:
    """A stand-in forward pass: doubles numbers, refuses 'bad', records each call and its thread."""

    def __init__(self):
        self.calls: list[list] = []
        self.threads: set[str] = set()

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        if "bad" in items:
            raise StrataError("'bad' is not a number")
        return [2 * x for x in items]


def run_requests(requests: list[list], **options) -> tuple[Recorder, list]:
    recorder = Recorder()

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            batcher = Batcher(recorder, pool, **options)
            jobs = [batcher.submit(items) for items in requests]
            out = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
            await batcher.stop()
            return out

    return recorder, run_coroutine(main())


def test_concurrent_requests_share_one_call():
    rec, out = run_requests([[1], [2, 3], [4]], max_batch=32, max_wait_ms=50)
    assert out == [[2], [4, 6], [8]]
    assert rec.calls == [[1, 2, 3, 4]]
    assert {t.split("_")[0] for t in rec.threads} == {"worker"}


def test_batches_hold_at_most_max_batch_items_and_whole_requests():
    rec, out = run_requests([[i, i] for i in range(5)], max_batch=4, max_wait_ms=50)
    assert out == [[2 * i, 2 * i] for i in range(5)]
    assert [len(c) for c in rec.calls] == [4, 4, 2]


def test_a_bad_request_fails_alone():
    rec, out = run_requests([[1], ["bad"], [3]], max_batch=32, max_wait_ms=50)
    assert out[0] == [2] and out[2] == [6]
    assert isinstance(out[1], StrataError) and "'bad'" in str(out[1])
    assert rec.calls == [[1, "bad", 3], [1], ["bad"], [3]]


@pytest.mark.parametrize("enabled,calls", [(False, 3), (True, 1)])
def test_batching_off_is_one_call_per_request(enabled, calls):
    rec, out = run_requests([[1], [2], [3]], max_batch=32, max_wait_ms=50, enabled=enabled)
    assert out == [[2], [4], [6]] and len(rec.calls) == calls


def test_an_abandoned_request_is_skipped():
    recorder = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(recorder, pool, max_batch=32, max_wait_ms=50)
            gone, kept = batcher.submit([1]), batcher.submit([2])
            gone.abandoned = True
            out = await kept.future
            await batcher.stop()
            return out

    assert run_coroutine(main()) == [4] and recorder.calls == [[2]]
