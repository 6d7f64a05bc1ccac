"""The receiver's hand-over of the writer's answers to the event loop."""

from __future__ import annotations

import asyncio
import threading
from unittest import mock

from cds.core.errors import StorageError
from connectors.dicom.index import IndexOutcome
from connectors.dicom.receive import _Settler


def test_a_batch_of_answers_wakes_the_loop_once() -> None:
    """Four answers given together from the writer's thread: one call_soon_threadsafe,
    each future resolved with its own outcome or error."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        settler = _Settler(loop)
        futures = [loop.create_future() for _ in range(4)]
        error = StorageError("index writer stopped")
        with mock.patch.object(
            loop, "call_soon_threadsafe", wraps=loop.call_soon_threadsafe
        ) as wake:

            def answer_batch() -> None:
                for i, future in enumerate(futures):
                    if i == 2:
                        settler.settle(future, None, error)
                    else:
                        settler.settle(future, IndexOutcome.STORED, None)

            writer = threading.Thread(target=answer_batch)
            writer.start()
            writer.join()
            results = await asyncio.gather(*futures, return_exceptions=True)
        assert wake.call_count == 1
        return results

    results = asyncio.run(main())
    assert results[:2] == [IndexOutcome.STORED] * 2 and results[3] is IndexOutcome.STORED
    assert isinstance(results[2], StorageError)


def test_answers_after_a_hand_over_schedule_the_next() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        settler = _Settler(loop)
        for _ in range(3):
            future = loop.create_future()
            answer = (future, IndexOutcome.DUPLICATE, None)
            threading.Thread(target=settler.settle, args=answer).start()
            assert await asyncio.wait_for(future, 5) is IndexOutcome.DUPLICATE

    asyncio.run(main())


def test_an_answer_for_a_closed_loop_is_dropped() -> None:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    _Settler(loop).settle(future, IndexOutcome.STORED, None)  # nobody waits: no error
    assert not future.done()
