from __future__ import annotations

import random

import pytest

from tornado_echo.loadtest.config import SizeSpec
from tornado_echo.loadtest.histogram import Histogram
from tornado_echo.loadtest.tracker import EchoTracker, Filler, LiveCounters


def make(
    sizes: str = "32", open_loop: bool = True
) -> tuple[EchoTracker, LiveCounters, Histogram, Histogram]:
    """A tracker; a closed loop's keeps no uncorrected figure (``raw`` stays empty)."""
    live = LiveCounters()
    corrected, raw = Histogram(), Histogram()
    spec = SizeSpec.parse(sizes)
    tracker = EchoTracker(
        live, corrected, raw if open_loop else None, spec, Filler(spec.high), random.Random(1)
    )
    return tracker, live, corrected, raw


def test_payload_carries_sequence_and_size() -> None:
    tracker, live, _, _ = make("20-40")
    payloads = [tracker.next_payload(0, 0) for _ in range(50)]
    assert [int(p[:16], 16) for p in payloads] == list(range(50))
    assert all(20 <= len(p) <= 40 for p in payloads)
    assert live.sent == 50 and live.bytes_sent == sum(map(len, payloads))


def test_good_echo_records_corrected_and_raw_latency() -> None:
    tracker, live, corrected, raw = make()
    payload = tracker.next_payload(intended_ns=1000, now_ns=4000)
    assert tracker.on_echo(payload, now_ns=10_000)
    assert live.received == 1 and not tracker.pending
    assert corrected.maximum == 9000 and raw.maximum == 6000


def test_mismatch_duplicate_unknown_and_garbage() -> None:
    tracker, live, _, _ = make()
    first = tracker.next_payload(0, 0)
    second = tracker.next_payload(0, 0)
    assert tracker.on_echo(first[:-1] + b"!", 1)  # wrong body: resolves, but mismatched
    assert live.mismatches == 1
    assert tracker.on_echo(second, 1)
    assert not tracker.on_echo(second, 2)  # again: duplicate
    assert live.duplicates == 1
    assert not tracker.on_echo(b"%016x" % 99 + first[16:], 3)  # never sent
    assert not tracker.on_echo(b"not a sequence number at all", 3)
    assert live.mismatches == 3
    assert not tracker.on_echo(b"  000000000000001" + first[16:], 3)  # int() leniency
    assert live.received == 1


def test_garbled_spelling_of_a_sequence_in_flight_answers_it_as_mismatch() -> None:
    tracker, live, _, _ = make()
    payload = tracker.next_payload(0, 0)
    garbled = b"0x" + payload[2:]  # int(..., 16) reads it as the same number
    assert tracker.on_echo(garbled, 1)  # the closed loop goes on
    assert live.mismatches == 1 and live.received == 0 and not tracker.pending


def test_reordering_and_expiry() -> None:
    tracker, live, _, _ = make()
    payloads = [tracker.next_payload(0, t) for t in (10, 20, 30)]
    assert tracker.on_echo(payloads[1], 40)
    assert tracker.on_echo(payloads[0], 41)
    assert live.reordered == 1
    assert tracker.expire(deadline_ns=25) == 0
    assert tracker.expire(deadline_ns=31) == 1
    assert live.lost == 1 and not tracker.pending
    # A late echo of an expired message is neither duplicate nor mismatch.
    assert not tracker.on_echo(payloads[2], 50)
    assert live.duplicates == 0 and live.mismatches == 0


def test_abandon_counts_all_in_flight_as_lost() -> None:
    tracker, live, _, _ = make()
    for _ in range(4):
        tracker.next_payload(0, 0)
    assert tracker.abandon() == 4 and live.lost == 4


def test_retyped_echo_answers_its_message_without_counting_it_good() -> None:
    tracker, live, corrected, _ = make()
    payload = tracker.next_payload(0, 0)
    assert tracker.on_retyped(payload)
    assert live.retyped == 1 and live.received == 0 and not tracker.pending
    assert corrected.total == 0
    assert not tracker.on_retyped(payload)  # again: a duplicate, not a second retype
    assert live.retyped == 1 and live.duplicates == 1


def garble(payload: bytes, index: int) -> bytes:
    return (
        payload[:index]
        + (b"0" if payload[index : index + 1] != b"0" else b"1")
        + payload[index + 1 :]
    )


@pytest.mark.parametrize(("sizes", "digit"), [("64", 0), ("64", 15), ("17", 15), ("20-40", 15)])
def test_garbled_sequence_number_answers_its_message(sizes: str, digit: int) -> None:
    tracker, live, _, _ = make(sizes)
    first, second = tracker.next_payload(0, 0), tracker.next_payload(0, 0)
    assert tracker.on_echo(garble(first, digit), 1)
    assert tracker.on_echo(second, 1)
    assert live.mismatches == 1 and live.received == 1
    assert live.duplicates == 0 and not tracker.pending


def test_prefix_garbled_into_another_message_in_flight_answers_the_right_one() -> None:
    tracker, live, _, _ = make()
    first, second = tracker.next_payload(0, 0), tracker.next_payload(0, 0)
    assert tracker.on_echo(first[:16] + second[16:], 1)  # second's echo, prefix of first
    assert live.mismatches == 1
    assert tracker.on_echo(first, 2)  # first is still in flight and now answered
    assert live.received == 1 and not tracker.pending


def snapshot(tracker: EchoTracker, live: LiveCounters, *hists: Histogram) -> object:
    counters = {name: getattr(live, name) for name in LiveCounters.__slots__}
    return (
        counters,
        list(tracker.pending.items()),
        tracker.next_seq,
        tracker.max_received,
        [(h.buckets(), h.total, h.total_sum, h.minimum, h.maximum) for h in hists],
    )


def test_answer_and_next_is_on_echo_then_next_payload() -> None:
    # The same echoes, out of order too, through the one-call step and the two calls.
    one_step, live_a, *hists_a = make("64", open_loop=False)
    two_calls, live_b, *hists_b = make("64", open_loop=False)
    for tracker in (one_step, two_calls):
        for _ in range(3):
            tracker.next_payload(5, 7)
    order = [1, 0, 2, 3, 4, 6, 5]
    for step, seq in enumerate(order):
        now = 100 + step
        echo = next(p for *_, p in one_step.pending.values() if int(p[:16], 16) == seq)
        following = one_step.answer_and_next(echo, now)
        assert two_calls.on_echo(echo, now)
        assert following == two_calls.next_payload(now, now)
    assert snapshot(one_step, live_a, *hists_a) == snapshot(two_calls, live_b, *hists_b)
    assert live_a.reordered == 2 and live_a.received == len(order)


@pytest.mark.parametrize(
    ("sizes", "garble_it"),
    [
        ("64", True),  # a mismatch is on_echo()'s to classify
        ("20", False),  # the suffix is shorter than the sequence number
        ("40-64", False),  # sizes vary
    ],
)
def test_answer_and_next_leaves_everything_else_to_on_echo(sizes: str, garble_it: bool) -> None:
    tracker, live, corrected, raw = make(sizes, open_loop=False)
    payload = tracker.next_payload(0, 0)
    echo = garble(payload, len(payload) - 1) if garble_it else payload
    before = snapshot(tracker, live, corrected, raw)
    assert tracker.answer_and_next(echo, 1) is None
    assert tracker.answer_and_next(b"%016x" % 7 + payload[16:], 1) is None  # not in flight
    assert snapshot(tracker, live, corrected, raw) == before


def test_an_echo_after_its_timeout_moves_it_from_lost_to_late_and_is_timed() -> None:
    live = LiveCounters()
    latency = Histogram()
    tracker = EchoTracker(
        live, latency, Histogram(), SizeSpec(64, 64), Filler(64), random.Random(1)
    )
    first = tracker.next_payload(0, 0)
    second = tracker.next_payload(10, 10)
    assert tracker.expire(5) == 1 and live.lost == 1
    assert tracker.on_echo(second, 20)
    assert not tracker.on_echo(first, 3_000)  # late: its place in the loop is taken
    assert (live.lost, live.late, live.reordered, live.received) == (0, 1, 1, 1)
    assert latency.total == 2 and latency.maximum >= 3_000
    assert not tracker.on_echo(first, 4_000)  # twice: a duplicate
    assert live.duplicates == 1 and live.late == 1
