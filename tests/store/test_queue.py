"""The memory queue without I/O: batches, wake-ups, byte bounds, the spooler's share."""

from __future__ import annotations

from tests.store.test_backends import opened
from tests.store.test_store import sid
from tornado_echo.store.queue import MemoryQueue
from tornado_echo.store.records import RECORD_OVERHEAD, MessageReceived, footprint


def message(seq: int, size: int) -> MessageReceived:
    return MessageReceived(sid(1), seq, 1.0, 2, size, b"z" * size)


def test_a_full_batch_and_not_less_wakes_the_writer() -> None:
    queue = MemoryQueue(batch_size=10)
    for number in range(9):
        queue.put(opened(sid(number)))
    assert not queue.full.is_set() and not queue.has_batch()
    queue.put(opened(sid(9)))
    assert queue.full.is_set() and queue.has_batch()


def test_a_batch_holds_at_most_batch_size_records_and_stays_queued() -> None:
    queue = MemoryQueue(batch_size=10)
    records = [opened(sid(number)) for number in range(25)]
    for record in records:
        queue.put(record)
    head, batch = queue.peek()
    assert (head, batch) == (0, records[:10])
    assert queue.peek() == (0, records[:10])  # a peek takes nothing
    queue.remove(head, len(batch))
    assert queue.peek() == (10, records[10:20])
    assert queue.snapshot()[0] == 15


def test_a_batch_is_cut_to_its_byte_bound_but_holds_one_record() -> None:
    queue = MemoryQueue(batch_size=100, bytes_limit=16 * 10_000, max_payload=20_000)
    assert queue.batch_bytes == 10_000
    for seq in range(1, 6):
        queue.put(message(seq, 4_000))
    assert len(queue.peek()[1]) == 2  # two fit in 10,000 bytes, a third does not
    big = MemoryQueue(batch_size=100, bytes_limit=16 * 10_000, max_payload=20_000)
    big.put(message(1, 15_000))
    assert len(big.peek()[1]) == 1


def test_records_over_the_limits_are_taken_oldest_first_and_the_writer_can_tell() -> None:
    queue = MemoryQueue(batch_size=5, limit=8)
    records = [opened(sid(number)) for number in range(12)]
    for record in records[:8]:
        queue.put(record)
    assert not queue.overflow.is_set()
    for record in records[8:]:
        queue.put(record)
    assert queue.overflow.is_set()
    head, batch = queue.peek()
    assert queue.take(everything=False) == records[:4]
    assert queue.moved(head)
    queue.remove(head, len(batch))  # only the record of the batch still queued goes
    assert queue.peek() == (5, records[5:10])
    assert queue.take(everything=True) == records[5:]
    assert queue.snapshot()[:2] == (0, 0)


def test_payloads_are_cut_then_shed_past_twice_the_byte_limit() -> None:
    queue = MemoryQueue(bytes_limit=8_000, max_payload=6_000)
    assert not queue.put(message(1, 50_000))
    assert queue.snapshot()[1] == RECORD_OVERHEAD + 6_000
    assert not queue.put(message(2, 6_000))
    assert queue.put(message(3, 6_000))  # 12,640 + 6,320 > 16,000: only the facts kept
    held = queue.snapshot()
    records = queue.take(everything=True)
    assert held == (3, sum(map(footprint, records)), 1.0, 1)
    shed = records[2]
    assert isinstance(shed, MessageReceived)
    assert (shed.payload, shed.truncated, shed.size) == (b"", True, 6_000)


def test_the_writer_is_woken_by_the_first_record_of_a_batch_only() -> None:
    queue = MemoryQueue(batch_size=3)
    queue.put(opened("a"))
    assert queue.arrived.is_set() and not queue.full.is_set()
    queue.arrived.clear()  # the writer, woken, waits out its batch window
    queue.put(opened("b"))
    assert not queue.arrived.is_set()
    queue.put(opened("c"))
    assert queue.full.is_set() and not queue.arrived.is_set()
    head, records = queue.peek()
    queue.remove(head, len(records))
    queue.put(opened("d"))  # the next batch's first
    assert queue.arrived.is_set()
