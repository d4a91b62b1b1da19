"""Dynamic batching: the products of concurrent requests gathered into one ``classify`` call.

One worker task takes the first waiting product, waits at most ``max_wait_s`` for others (or until
``batch_size`` are there) and runs ``classify`` on them in the batcher's own thread, so the event loop
keeps reading requests while the model works. The waiting line is bounded: a request whose products do
not fit is refused at once (``Overloaded``, with a Retry-After estimate) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from etalage.errors import DataError
from etalage.serve.model import Classifier, Listing, Proposal

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """More products waiting than the server holds; ``retry_after_s`` is when the line should have room."""

    def __init__(self, retry_after_s: int, waiting: int):
        super().__init__(f"the server is at capacity ({waiting} products waiting for the model); retry in "
                         f"{retry_after_s} s")
        self.retry_after_s = retry_after_s


class ClassifierFailed(Exception):
    """The classifier raised on a batch (not a bad picture): logged with its traceback, the request gets 500."""


class Batcher:
    """The waiting line and the worker that empties it. Created and started inside a running event loop
    (the app's lifespan), stopped there: ``stop`` lets the products already queued finish first."""

    def __init__(self, classifier: Classifier, batch_size: int, max_wait_s: float, max_queue: int):
        self.classifier = classifier
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batches = 0
        self.products = 0
        self._waiting: collections.deque = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="etalage-classify")
        self._batch_s = 0.0  # moving average of one classify call, for Retry-After
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="etalage-batcher")

    async def stop(self) -> None:
        while self._waiting:  # uvicorn closed the connections first: what is left is being answered
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def classify(self, listings: list[Listing]) -> list[Proposal | Exception]:
        """The listings' proposals, in order; a listing the classifier could not read gets its
        ``DataError`` in its place (the others are answered). Raises ``Overloaded`` when the line is full."""
        if len(self._waiting) + len(listings) > self.max_queue:
            raise Overloaded(self.retry_after_s(), len(self._waiting))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in listings]
        self._waiting.extend(zip(listings, futures, strict=True))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            for f in futures:  # a client gone away: its products are skipped, not classified
                f.cancel()

    def retry_after_s(self) -> int:
        batches_ahead = len(self._waiting) / self.batch_size + 1
        return max(1, math.ceil(batches_ahead * max(self._batch_s, self.max_wait_s)))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(loop)
            live = [(listing, f) for listing, f in batch if not f.done()]
            if not live:
                continue
            t0 = time.perf_counter()
            results = await loop.run_in_executor(self._executor, self._classify, [listing for listing, _ in live])
            seconds = time.perf_counter() - t0
            self._batch_s = seconds if not self.batches else 0.8 * self._batch_s + 0.2 * seconds
            self.batches += 1
            self.products += len(live)
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _gather(self, loop) -> list:
        """The next batch: the first waiting product and whoever arrives within ``max_wait_s`` after it."""
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.max_wait_s
        batch = []
        while True:
            while self._waiting and len(batch) < self.batch_size:
                batch.append(self._waiting.popleft())
            left = deadline - loop.time()
            if len(batch) >= self.batch_size or left <= 0:
                return batch
            self._arrived.clear()
            try:  # an Event, not the queue itself: a timed-out wait can lose no product
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _classify(self, listings: list[Listing]) -> list[Proposal | Exception]:
        """One classify call (in the batcher's thread). A listing the model cannot read fails the whole call:
        each listing is then classified alone, so only the bad one gets its error."""
        try:
            out = self.classifier.classify(listings)
        except DataError as exc:
            if len(listings) == 1:
                return [exc]
            return [self._classify([listing])[0] for listing in listings]
        except Exception as exc:  # noqa: BLE001 - a model bug answers 500 for this batch; the server stays up
            log.exception("the classifier failed on a batch of %d products", len(listings))
            return [ClassifierFailed(f"the classifier failed: {type(exc).__name__}: {exc}")] * len(listings)
        if len(out) != len(listings):
            error = ClassifierFailed(f"the classifier returned {len(out)} proposals for {len(listings)} products")
            return [error] * len(listings)
        return list(out)
