"""The batcher alone (no HTTP): a batch closes when it is full or when its first product has waited
``max_wait``, whichever comes first; the line is bounded; a client gone away costs no model time."""

from __future__ import annotations

import asyncio
import time

import pytest

from etalage.serve.batching import Batcher, Overloaded
from etalage.serve.model import Listing
from tests.serve.fakes import FakeClassifier, picture

LISTING = Listing(pictures=[picture()])


def _run(coro):
    return asyncio.run(coro)


async def _timed(batcher: Batcher, n: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(batcher.classify([LISTING]) for _ in range(n)))
    return time.perf_counter() - t0, results


def test_a_full_batch_goes_at_once_and_a_lone_product_after_max_wait():
    async def scenario():
        fake = FakeClassifier(max_batch=8)
        batcher = Batcher(fake, batch_size=8, max_wait_s=0.5, max_queue=64)
        batcher.start()
        full, results = await _timed(batcher, 8)
        lone, _ = await _timed(batcher, 1)
        await batcher.stop()
        return fake, full, lone, results

    fake, full, lone, results = _run(scenario())
    assert fake.batches == [8, 1]
    assert full < 0.3, f"a full batch waited {full:.2f} s for company it did not need"
    assert 0.45 <= lone < 1.5, f"a lone product waited {lone:.2f} s (max_wait 0.5 s)"
    assert all(len(r) == 1 and r[0].categories for r in results)


def test_the_line_is_bounded_and_refuses_at_once():
    async def scenario():
        fake = FakeClassifier(max_batch=2, delay_s=0.3)
        batcher = Batcher(fake, batch_size=2, max_wait_s=0.0, max_queue=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.classify([LISTING, LISTING]))  # taken by the worker
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.classify([LISTING] * 3))   # fills the line
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.classify([LISTING])
        done = await asyncio.gather(first, waiting)
        await batcher.stop()
        return refused.value, done

    refused, done = _run(scenario())
    assert refused.retry_after_s >= 1 and "3 products waiting" in str(refused)
    assert [len(d) for d in done] == [2, 3]


def test_a_cancelled_request_is_not_classified():
    async def scenario():
        fake = FakeClassifier(max_batch=4, delay_s=0.2)
        batcher = Batcher(fake, batch_size=4, max_wait_s=0.0, max_queue=64)
        batcher.start()
        busy = asyncio.ensure_future(batcher.classify([LISTING]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.classify([LISTING, LISTING]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected while its products waited
        await busy
        await asyncio.sleep(0.3)
        await batcher.stop()
        return fake

    assert _run(scenario()).batches == [1]
