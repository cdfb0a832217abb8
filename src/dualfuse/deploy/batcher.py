"""Micro-batching: requests that arrive within a few milliseconds of each other share one forward pass.

Requests wait in a queue; a single consumer takes up to `max_batch` of them and runs them as one
batch on a one-thread executor (the model is not thread-safe: MC dropout and Grad-CAM patch and
hook its modules), so the event loop keeps accepting requests while the model computes. While
one batch computes the next one fills up, so under load batches grow by themselves.

A request announces itself (`expect`) when its upload starts being read and decoded; the
consumer waits for announced requests, at most `max_wait` seconds, before it starts a batch. A
lone request is announced by no one else, so it never waits.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    """`await submit(item)` → that item's result from `run(items)`, which answers a whole batch."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], executor: Executor, max_batch: int = 32,
                 max_wait: float = 0.005):
        if max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"--max-wait-ms must be 0 or more, got {max_wait * 1000:g}")
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self._pending: collections.deque = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0  # requests announced (reading or decoding their upload) and not yet queued
        self.batches = 0
        self.items = 0
        self.largest = 0

    def expect(self) -> None:
        """A request is on its way: its upload is being read and decoded."""
        self._expected += 1

    def unexpect(self) -> None:
        """An announced request will not come (its upload was refused)."""
        self._expected = max(0, self._expected - 1)

    async def submit(self, item: Any, expected: bool = False) -> Any:
        """Queue `item` (announced with `expect` when `expected`) and wait for its result."""
        if expected:
            self.unexpect()
        loop = asyncio.get_running_loop()
        if self._consumer is None or self._consumer.done() or self._loop is not loop:
            # One consumer per event loop (a test client may run each request on a fresh loop).
            self._pending.clear()
            self._loop, self._wakeup = loop, asyncio.Event()
            self._consumer = loop.create_task(self._consume())
        future = loop.create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return await future

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            deadline = loop.time() + self.max_wait
            while len(self._pending) < self.max_batch and self._expected and loop.time() < deadline:
                await asyncio.sleep(0.0005)  # announced requests are decoding: let them join this batch
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            if self._pending:
                self._wakeup.set()
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as error:  # the whole batch failed: every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.items += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._consumer is not None and self._loop is asyncio.get_running_loop():
            self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                pass
            self._consumer = None

    def stats(self) -> dict:
        return {"batches": self.batches, "requests": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else None}
