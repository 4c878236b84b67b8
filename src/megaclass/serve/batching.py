"""``MicroBatcher``: concurrent requests' rows run through one function call together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


@dataclass
class _Request:
    rows: torch.Tensor  # [n, ...]
    k: int
    done: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects the rows of concurrent requests and runs ``fn(rows, k)`` once for all of them.

    A batch starts with the first waiting request and takes those already waiting and those
    that arrive within ``max_wait_s`` of it, up to ``max_rows`` rows (a request is never split;
    with ``max_wait_s = 0`` a batch is whatever queued while the previous one ran); requests asking
    for different ``k`` run with the largest and are cut to their own; when ``fn`` fails on a
    batch, each of its requests is run alone, so that only the one at fault fails. ``fn`` maps
    rows [N, ...] and k to a tuple of tensors [N, k] (ids, scores) and runs on one worker
    thread, so that the event loop keeps accepting requests meanwhile. ``batches`` counts the
    successful calls of ``fn``.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]],
        max_rows: int = 256,
        max_wait_s: float = 0.0,
    ) -> None:
        if max_rows < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_rows must be >= 1 and max_wait_s >= 0, got {max_rows}, {max_wait_s}"
            )
        self.fn, self.max_rows, self.max_wait_s = fn, max_rows, max_wait_s
        self.batches = 0
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megaclass-batch")
        self._task: asyncio.Task | None = None

    async def __call__(self, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """This request's results: fn's outputs for its rows, [n, k] each."""
        if self._task is None:  # started on the serving event loop, on first use
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve())
        request = _Request(rows, k, asyncio.get_running_loop().create_future())
        await self._queue.put(request)
        return await request.done

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].rows)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_rows:
                if not self._queue.empty():  # those already waiting join, whatever the wait
                    request = self._queue.get_nowait()
                elif deadline <= loop.time():
                    break
                else:
                    try:
                        request = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                if size + len(request.rows) > self.max_rows:
                    await self._run(batch)
                    batch, size, deadline = [], 0, loop.time() + self.max_wait_s
                batch.append(request)
                size += len(request.rows)
            await self._run(batch)

    async def _run(self, batch: list[_Request]) -> None:
        """fn over the batch; when it fails, over each request alone, so that one request
        that makes fn fail does not fail the others."""
        try:
            outputs = await self._call(batch)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            for request in batch:
                await self._run([request])
            return
        start = 0
        for request in batch:
            stop = start + len(request.rows)
            _settle(request, tuple(out[start:stop, : request.k] for out in outputs))
            start = stop

    async def _call(self, batch: list[_Request]) -> tuple[torch.Tensor, ...]:
        k = max(request.k for request in batch)
        rows = torch.cat([request.rows for request in batch])
        outputs = await asyncio.get_running_loop().run_in_executor(self._worker, self.fn, rows, k)
        self.batches += 1
        return outputs

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._worker.shutdown(wait=False)


def _settle(request: _Request, result=None, error: Exception | None = None) -> None:
    """Answer a request, unless it was cancelled (past its deadline)."""
    if request.done.done():
        return
    if error is None:
        request.done.set_result(result)
    else:
        request.done.set_exception(error)
