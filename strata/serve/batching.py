"""Dynamic batching: the items of concurrent requests share one forward pass.

Requests queue their items; once the worker is free, a collector task takes the first waiting
request, then keeps taking requests for up to `max_wait_ms` or until `max_batch` items are gathered,
and hands the lot to ONE call of `run(items) -> results` in the run's worker thread (torch never
runs on the event loop). While that pass runs, the next requests queue up, so under load batches
fill as the answers of the last one bring their clients back.

A batch that fails is rerun request by request, so only the request at fault gets the error.
With batching off every request is its own pass, through the same queue and the same thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Job:
    items: list[Any]
    future: asyncio.Future
    abandoned: bool = False  # the client stopped waiting (timeout): skip it if not started yet
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """One per served run. `await submit(items)` -> one result per item, in order."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], executor: Executor, *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, enabled: bool = True):
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait_s, self.enabled = max_batch, max_wait_ms / 1000.0, enabled
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.held: Job | None = None  # taken from the queue but left for the next batch (it did not fit)
        self.requests = self.batches = self.items = 0  # counters for GET /info

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None

    def submit(self, items: list[Any]) -> Job:
        """Queue a request's items; await `job.future` for the results (set `job.abandoned` to give up)."""
        self.start()
        self.requests += 1
        job = Job(list(items), asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return job

    async def _next(self, timeout: float | None = None) -> Job | None:
        if self.held is not None:
            job, self.held = self.held, None
            return job
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            return self.queue.get_nowait() if not self.queue.empty() else None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _gather(self) -> list[Job]:
        """The next batch: whole requests, at most max_batch items (a bigger request goes alone)."""
        jobs, count = [], 0
        deadline = None
        while True:
            wait = None if not jobs else deadline - time.perf_counter()
            job = await self._next(wait)
            if job is None:
                return jobs
            if job.abandoned or job.future.done():
                continue
            if jobs and count + len(job.items) > self.max_batch:
                self.held = job
                return jobs
            jobs.append(job)
            count += len(job.items)
            if not self.enabled or count >= self.max_batch:
                return jobs
            if deadline is None:  # counted from when the worker could take it: dispatching what queued behind
                deadline = time.perf_counter() + self.max_wait_s  # the last batch at once halves the batches

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            jobs = [j for j in jobs if not j.abandoned and not j.future.done()]
            if not jobs:
                continue
            outcomes = await loop.run_in_executor(self.executor, self._run_jobs, jobs)
            for job, outcome in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _run_jobs(self, jobs: list[Job]) -> list[list[Any] | BaseException]:
        """In the worker thread: one pass over every job's items; on failure, each job alone."""
        items = [x for job in jobs for x in job.items]
        self.batches += 1
        self.items += len(items)
        try:
            results = self.run(items)
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} inputs")
        except Exception as e:  # noqa: BLE001 - handed to the request(s) at fault
            if len(jobs) == 1:
                return [e]
            return [self._run_alone(job) for job in jobs]
        out, start = [], 0
        for job in jobs:
            out.append(results[start:start + len(job.items)])
            start += len(job.items)
        return out

    def _run_alone(self, job: Job) -> list[Any] | BaseException:
        if job.abandoned:
            return TimeoutError("abandoned")
        try:
            results = self.run(job.items)
            if len(results) != len(job.items):
                raise RuntimeError(f"{len(results)} results for {len(job.items)} inputs")
            return results
        except Exception as e:  # noqa: BLE001
            return e
