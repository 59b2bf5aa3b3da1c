"""The shared RFC 6455 / RFC 7692 module, without sockets."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib

import pytest

from tests.helpers import deflated
from tornado_echo.wire import (
    FEED_MAX_FRAMES,
    FEED_MAX_INFLATED,
    CloseCode,
    FrameReader,
    Opcode,
    PerMessageDeflate,
    ProtocolError,
    accept_value,
    check_client_header,
    close_payload,
    encode_frame,
    frame_header,
    is_sendable_close_code,
    length_and_mask,
    negotiate_deflate,
    parse_close_payload,
)


def masked(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame; ``rsv`` is OR-ed into the first byte (0x40 RSV1, 0x20, 0x10)."""
    key = os.urandom(4)
    length = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    if length < 126:
        head = bytes((b0, bit | length))
    elif length < 65536:
        head = struct.pack("!BBH", b0, bit | 126, length)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, length)
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# -- close codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_sendable_close_codes(code: int) -> None:
    assert is_sendable_close_code(code)
    assert parse_close_payload(struct.pack("!H", code) + "raison ✓".encode()) == (code, "raison ✓")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_codes_that_may_not_be_sent(code: int) -> None:
    assert not is_sendable_close_code(code)
    with pytest.raises(ProtocolError) as caught:
        parse_close_payload(struct.pack("!H", code))
    assert (caught.value.code, caught.value.reason) == (1002, f"invalid close code {code}")


def test_close_payload_edge_cases() -> None:
    assert parse_close_payload(b"") == (None, "")
    with pytest.raises(ProtocolError) as one_byte:
        parse_close_payload(b"\x03")
    assert one_byte.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(ProtocolError) as bad_reason:
        parse_close_payload(struct.pack("!H", 1000) + b"\xc3\x28")
    assert bad_reason.value.code == CloseCode.INVALID_PAYLOAD


def test_close_payload_building_cuts_long_reasons_at_a_character() -> None:
    assert close_payload(None, None) == b""
    assert close_payload(None, "bye") == struct.pack("!H", 1000) + b"bye"
    body = close_payload(1001, "é" * 100)  # 200 bytes of UTF-8: too long for a control frame
    assert len(body) <= 125
    assert parse_close_payload(body) == (1001, "é" * 61)


def test_accept_value_matches_the_rfc_example() -> None:
    assert accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- the frame reader -----------------------------------------------------------------------


def test_whole_messages_and_control_frames_in_order() -> None:
    reader = FrameReader(1000)
    data = (
        masked(Opcode.TEXT, "héllo".encode())
        + masked(Opcode.PING, b"p")
        + masked(Opcode.BINARY, b"\x00\xff")
    )
    assert reader.feed(data) == [
        (Opcode.TEXT, "héllo"),
        (Opcode.PING, b"p"),
        (Opcode.BINARY, b"\x00\xff"),
    ]


def test_frames_split_anywhere_are_reassembled() -> None:
    data = masked(Opcode.TEXT, b"a" * 300) + masked(Opcode.BINARY, b"b" * 70000)
    reader = FrameReader(100_000)
    events = []
    for i in range(0, len(data), 7):
        events += reader.feed(data[i : i + 7])
    assert events == [(Opcode.TEXT, "a" * 300), (Opcode.BINARY, b"b" * 70000)]
    assert reader.buffered == 0


def test_fragments_with_a_ping_between_them() -> None:
    reader = FrameReader(1000)
    data = (
        masked(Opcode.TEXT, b"frag", fin=False)
        + masked(Opcode.PING, b"!")
        + masked(Opcode.CONTINUATION, b"ment", fin=False)
        + masked(Opcode.CONTINUATION, b"ed")
    )
    assert reader.feed(data) == [(Opcode.PING, b"!"), (Opcode.TEXT, "fragmented")]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([masked(Opcode.TEXT, b"x", mask=False)], 1002),
        ([masked(Opcode.TEXT, b"x", rsv=0x40)], 1002),  # RSV1 without deflate
        ([masked(Opcode.TEXT, b"x", rsv=0x20)], 1002),
        ([masked(0x3, b"x")], 1002),
        ([masked(0xB, b"x")], 1002),
        ([masked(Opcode.PING, b"x" * 126)], 1002),
        ([masked(Opcode.PING, b"x", fin=False)], 1002),
        ([masked(Opcode.CONTINUATION, b"x")], 1002),
        ([masked(Opcode.TEXT, b"a", fin=False), masked(Opcode.TEXT, b"b")], 1002),
        ([masked(Opcode.TEXT, b"\xff")], 1007),
        ([masked(Opcode.BINARY, b"x" * 101)], 1009),
        ([masked(Opcode.TEXT, b"x" * 60, fin=False), masked(Opcode.CONTINUATION, b"x" * 60)], 1009),
    ],
    ids=[
        "unmasked",
        "rsv1-no-extension",
        "rsv2",
        "data-opcode-3",
        "control-opcode-b",
        "long-ping",
        "fragmented-ping",
        "orphan-continuation",
        "interleaved-messages",
        "bad-utf8",
        "frame-too-big",
        "message-too-big",
    ],
)
def test_violations_end_the_stream_with_their_close_code(frames: list[bytes], code: int) -> None:
    reader = FrameReader(100)
    events = reader.feed(masked(Opcode.TEXT, b"before") + b"".join(frames))
    assert events[0] == (Opcode.TEXT, "before")
    opcode, error = events[-1]
    assert opcode is None and isinstance(error, ProtocolError)
    assert error.code == code
    assert reader.feed(masked(Opcode.TEXT, b"after")) == []  # nothing more is accepted


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 1 << 40])
def test_a_header_read_in_two_steps_gives_length_and_mask(length: int) -> None:
    # As the stock engine reads it: two bytes, then the number check_client_header names.
    head = masked(Opcode.BINARY, b"")[:2]
    b1 = 0x80 | (length if length < 126 else 126 if length < 65536 else 127)
    rest = (
        b"" if length < 126 else struct.pack("!H" if length < 65536 else "!Q", length)
    ) + b"mask"
    assert check_client_header(head[0], b1, deflate=False, in_message=False) == len(rest)
    assert length_and_mask(b1, rest) == (length, b"mask")


@pytest.mark.parametrize(
    ("b0", "b1", "deflate", "in_message", "reason"),
    [
        (0x81, 0x05, False, False, "client frame is not masked"),
        (0xC1, 0x85, False, False, "RSV1 set without permessage-deflate"),
        (0x40, 0x85, True, True, "RSV1 set on a continuation frame"),
        (0xC9, 0x85, True, False, "control frame fragmented, compressed or too long"),
        (0x89, 0xFE, False, False, "control frame fragmented, compressed or too long"),
        (0x81, 0x85, False, True, "new message before the previous one finished"),
        (0x8F, 0x85, False, False, "unknown opcode 15"),
    ],
)
def test_client_header_checks_say_what_is_wrong(
    b0: int, b1: int, deflate: bool, in_message: bool, reason: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_client_header(b0, b1, deflate=deflate, in_message=in_message)
    assert (caught.value.code, caught.value.reason) == (1002, reason)


def test_invalid_utf8_fails_at_its_fragment_not_at_the_end() -> None:
    reader = FrameReader(1000)
    assert reader.feed(masked(Opcode.TEXT, b"caf", fin=False)) == []
    # A sequence split across fragments is fine...
    assert reader.feed(masked(Opcode.CONTINUATION, b"\xc3", fin=False)) == []
    assert reader.feed(masked(Opcode.CONTINUATION, b"\xa9", fin=False)) == []
    # ...an impossible byte fails at once, before the message's last fragment.
    [(opcode, error)] = reader.feed(masked(Opcode.CONTINUATION, b"\xff", fin=False))
    assert opcode is None and error.code == 1007


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.CONTINUATION])
def test_invalid_utf8_fails_inside_a_frame_still_arriving(opcode: Opcode) -> None:
    # Autobahn 6.4.3/6.4.4: the frame's header announces the whole payload, the bytes come in
    # chops; the impossible sequence must fail when it arrives, not when the frame completes.
    reader = FrameReader(1000)
    valid, invalid = " κόσμε".encode(), b"\xf4\x90\x80\x80"
    if opcode == Opcode.CONTINUATION:  # which carries on a character split at the frame
        assert reader.feed(masked(Opcode.TEXT, b"\xce", fin=False)) == []
        valid = b"\xba" + valid
    frame = masked(opcode, valid + invalid + b"edited")
    cut = len(frame) - len(invalid) - len(b"edited")
    for i in range(cut):  # header, mask and the valid part, a byte at a time
        assert reader.feed(frame[i : i + 1]) == []
    assert reader.feed(frame[cut : cut + 1]) == []  # \xf4 may still start a character
    [(failed, error)] = reader.feed(frame[cut + 1 : cut + 2])
    assert failed is None and error.code == 1007
    assert reader.feed(frame[cut + 2 :]) == []


def test_text_frames_arriving_in_pieces_are_checked_and_delivered_whole() -> None:
    text = "ü€𝄞 mask turns " * 997
    squeezed = " ".join(f"κόσμε {i}" for i in range(500))
    body = deflated(squeezed.encode())  # not UTF-8: only what it inflates to is checked
    stream = (
        masked(Opcode.TEXT, text.encode())
        + masked(Opcode.TEXT, "€".encode()[:1], fin=False)  # a character split at the frame
        + masked(Opcode.CONTINUATION, "€𝄞".encode()[1:])
        + masked(Opcode.TEXT, body[:100], fin=False, rsv=0x40)
        + masked(Opcode.CONTINUATION, body[100:])
    )
    reader = FrameReader(100_000, PerMessageDeflate({}))
    events = []
    for at in range(0, len(stream), 7):
        events += reader.feed(stream[at : at + 7])
    assert events == [(Opcode.TEXT, text), (Opcode.TEXT, "€𝄞"), (Opcode.TEXT, squeezed)]


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(1000)
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40)
    [(opcode, error)] = reader.feed(header)
    assert opcode is None and error.code == 1009


# -- permessage-deflate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b0", "code"),
    [(0x89, 1002), (0x8A, 1002), (0x88, 1002), (0x09, 1002), (0xC9, 1002), (0xA2, 1002)],
    ids=["ping", "pong", "close", "ping-unfinished", "ping-rsv1", "binary-rsv2"],
)
def test_a_frame_its_header_condemns_fails_before_its_payload_arrives(b0: int, code: int) -> None:
    # A 64 KiB control frame (or one with bad RSV bits) under a max_size of 1 MiB: only its
    # header and a few bytes have come, and the reader fails at once, holding nothing.
    reader = FrameReader(1 << 20)
    header = bytes((b0, 0x80 | 126)) + struct.pack("!H", 65535) + os.urandom(4)
    events = reader.feed(header + b"\x00" * 100)
    assert [(op, exc.code) for op, exc in events] == [(None, code)]
    assert reader.buffered == 0


def test_compressed_fragmented_message_with_a_ping_between() -> None:
    params, _ = negotiate_deflate("permessage-deflate") or ({}, "")
    reader = FrameReader(100_000, PerMessageDeflate(params))
    body = deflated(b"squeeze me " * 1000)
    data = (
        masked(Opcode.TEXT, body[:10], fin=False, rsv=0x40)
        + masked(Opcode.PING, b"")
        + masked(Opcode.CONTINUATION, body[10:])
    )
    assert reader.feed(data) == [(Opcode.PING, b""), (Opcode.TEXT, "squeeze me " * 1000)]


def test_context_takeover_across_messages_and_round_trip() -> None:
    compressor = zlib.compressobj(wbits=-15)
    reader = FrameReader(1000, PerMessageDeflate({}))
    for _ in range(3):
        frame = masked(Opcode.BINARY, deflated(b"same again", compressor), rsv=0x40)
        assert reader.feed(frame) == [(Opcode.BINARY, b"same again")]
    server = PerMessageDeflate({})
    inflater = zlib.decompressobj(wbits=-15)
    for _ in range(3):
        assert inflater.decompress(server.compress(b"reply") + b"\x00\x00\xff\xff") == b"reply"


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\xff\xff\xff\xff", 1007), (deflated(b"\x00" * 100_000), 1009)],
    ids=["not-deflate", "bomb"],
)
def test_bad_or_huge_deflate_data(payload: bytes, code: int) -> None:
    reader = FrameReader(1000, PerMessageDeflate({}))
    [(opcode, error)] = reader.feed(masked(Opcode.BINARY, payload, rsv=0x40))
    assert opcode is None and error.code == code


# RFC 7692 section 7.2.3.4: "Hello" in a block with BFINAL set, and the byte after it.
HELLO_FINAL = bytes.fromhex("f348cdc9c9070000")


@pytest.mark.parametrize("first", [HELLO_FINAL, HELLO_FINAL[:-1]], ids=["rfc", "no-byte-after"])
@pytest.mark.parametrize("params", [{}, {"client_no_context_takeover": None}])
def test_a_message_ending_in_a_final_block_leaves_later_ones_readable(
    first: bytes, params: dict[str, str | None]
) -> None:
    reader = FrameReader(1 << 20, PerMessageDeflate(params))
    # The sender's new stream, kept across messages when the context is taken over.
    compressor = None if params else zlib.compressobj(wbits=-15)
    rest = [deflated(b"world", compressor), deflated(b"world again", compressor)]
    events = reader.feed(b"".join(masked(0x2, body, rsv=0x40) for body in [first, *rest]))
    assert events == [
        (Opcode.BINARY, b"Hello"),
        (Opcode.BINARY, b"world"),
        (Opcode.BINARY, b"world again"),
    ]


@pytest.mark.parametrize("after", [b"\x01", b"\x00\x00", b"\x00garbage", b"\x00" * 9])
@pytest.mark.parametrize("fragmented", [False, True])
def test_bytes_after_a_final_block_fail_with_1007(after: bytes, fragmented: bool) -> None:
    reader = FrameReader(1 << 20, PerMessageDeflate({}))
    if fragmented:  # the extra bytes in a continuation frame of their own
        data = masked(0x2, HELLO_FINAL[:-1], fin=False, rsv=0x40) + masked(0x0, after)
    else:
        data = masked(0x2, HELLO_FINAL[:-1] + after, rsv=0x40)
    [(opcode, error)] = reader.feed(data)
    assert opcode is None and error.code == CloseCode.INVALID_PAYLOAD


def drain(reader: FrameReader, data: bytes) -> list[list[tuple[object, object]]]:
    """The slices one read of ``data`` comes out in: feed it, then feed(b"") while backlogged."""
    slices = [reader.feed(data)]
    while reader.backlog:
        slices.append(reader.feed(b""))
    return slices


def test_a_read_of_many_frames_comes_out_in_slices_in_order() -> None:
    reader = FrameReader(1000)
    count = 3 * FEED_MAX_FRAMES + 5
    data = b"".join(masked(Opcode.BINARY, b"%d" % i) for i in range(count))
    tail = masked(Opcode.BINARY, b"tail")
    slices = drain(reader, data + tail[:3])
    assert [len(part) for part in slices] == [FEED_MAX_FRAMES] * 3 + [5]
    assert [payload for part in slices for _, payload in part] == [b"%d" % i for i in range(count)]
    # Only the partial frame is left, and it completes with the next read.
    assert reader.buffered == 3
    assert reader.feed(tail[3:]) == [(Opcode.BINARY, b"tail")]


def test_bytes_that_arrive_while_a_backlog_waits_come_after_it() -> None:
    reader = FrameReader(1000)
    first = reader.feed(b"".join(masked(Opcode.TEXT, b"a") for _ in range(FEED_MAX_FRAMES + 1)))
    assert len(first) == FEED_MAX_FRAMES and reader.backlog
    assert reader.buffered == len(masked(Opcode.TEXT, b"a"))
    assert reader.feed(masked(Opcode.TEXT, b"b")) == [(Opcode.TEXT, "a"), (Opcode.TEXT, "b")]
    assert not reader.backlog and reader.buffered == 0


def test_a_slice_of_zero_keeps_what_arrives_and_smaller_slices_are_kept_to() -> None:
    # The turn budget of the process is spent: the read is held, unparsed, as a backlog;
    # a partial plain-text frame in the buffer goes back in front of it, checked again.
    reader = FrameReader(1 << 20, PerMessageDeflate({}))
    text = masked(Opcode.TEXT, "é".encode() * 100)
    assert reader.feed(text[:50]) == [] and not reader.backlog
    assert reader.feed(text[50:], 0, 0) == [] and reader.backlog
    assert (reader.frames, reader.inflated) == (0, 0)
    assert reader.buffered == len(text)
    bomb = masked(Opcode.BINARY, deflated(b"\x00" * 300_000), rsv=0x40)
    assert reader.feed(bomb + masked(Opcode.PING, b"p"), 0, 0) == []
    # Room for 1 frame and 100,000 inflated bytes: the text; then the bomb, 100,000 at a time.
    assert reader.feed(b"", 1, 100_000) == [(Opcode.TEXT, "é" * 100)]
    assert (reader.frames, reader.inflated) == (1, 0)
    pieces = []
    while reader.backlog:
        events = reader.feed(b"", 1, 100_000)
        pieces.append((reader.frames, reader.inflated, [(op, len(p)) for op, p in events]))
    assert pieces == [
        (1, 100_001, []),
        (0, 100_001, []),
        (1, 99_998, [(Opcode.BINARY, 300_000), (Opcode.PING, 1)]),  # the ping is the frame
    ]
    assert reader.message_bytes == 0 and reader.buffered == 0


def test_no_room_to_inflate_parses_up_to_the_first_compressed_frame() -> None:
    # Memory is short: plain frames go on, a compressed message waits, in order.
    reader = FrameReader(1 << 20, PerMessageDeflate({}))
    compressor = zlib.compressobj(wbits=-15)
    # A message's fragments split one deflate stream; only its end drops 00 00 ff ff.
    head = compressor.compress(b"x" * 1000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    first = masked(Opcode.BINARY, head, rsv=0x40, fin=False)
    data = (
        masked(Opcode.TEXT, b"plain")
        + masked(Opcode.PING, b"p")
        + first
        + masked(Opcode.CONTINUATION, deflated(b"y" * 1000, compressor))
        + masked(Opcode.TEXT, b"after")
    )
    assert reader.feed(data, 100, 0) == [(Opcode.TEXT, "plain"), (Opcode.PING, b"p")]
    assert reader.backlog and reader.inflated == 0 and reader.compressed_next
    [(opcode, payload), after] = reader.feed(b"")
    assert (opcode, payload) == (Opcode.BINARY, b"x" * 1000 + b"y" * 1000)
    assert after == (Opcode.TEXT, "after") and not reader.backlog
    # Between the fragments of a compressed message, the continuation waits as well.
    reader.feed(masked(Opcode.BINARY, head, rsv=0x40, fin=False))
    assert reader.message_bytes == 1000
    assert reader.feed(masked(Opcode.CONTINUATION, b"\x00"), 100, 0) == []
    assert reader.backlog and reader.message_bytes == 1000


def test_invalid_text_held_by_a_slice_of_zero_still_fails_when_parsed() -> None:
    reader = FrameReader(1000)
    bad = masked(Opcode.TEXT, b"ok" + b"\xff" * 20)
    assert reader.feed(bad[:4]) == []
    assert reader.feed(bad[4:], 0, 0) == []
    [(opcode, error)] = reader.feed(b"")
    assert opcode is None and error.code == 1007


def test_small_compressed_messages_that_inflate_to_much_come_out_one_slice_at_a_time() -> None:
    # Each 1 KB on the wire inflates to FEED_MAX_INFLATED: one per slice, however many
    # arrive in one read, so memory and time per turn stay bounded.
    compressor = zlib.compressobj(level=9, wbits=-15)
    bomb = b"\x00" * FEED_MAX_INFLATED
    data = b"".join(masked(Opcode.BINARY, deflated(bomb, compressor), rsv=0x40) for _ in range(4))
    assert len(data) < 20_000
    slices = drain(FrameReader(FEED_MAX_INFLATED, PerMessageDeflate({})), data)
    assert [[(opcode, len(payload)) for opcode, payload in part] for part in slices] == [
        [(Opcode.BINARY, FEED_MAX_INFLATED)]
    ] * 4


def test_once_closing_data_frames_are_skipped_unread_and_control_frames_still_come() -> None:
    reader = FrameReader(FEED_MAX_INFLATED, PerMessageDeflate({}))
    assert reader.feed(masked(Opcode.BINARY, b"x" * 5000, fin=False)) == []
    assert reader.buffered == 5000  # an unfinished message...
    reader.discard_data()
    assert reader.buffered == 0  # ...is let go
    bomb = masked(Opcode.BINARY, deflated(b"\x00" * FEED_MAX_INFLATED), rsv=0x40)
    data = b"".join(
        (
            bomb * 8,  # would inflate to 8 MiB, in 8 slices
            masked(Opcode.BINARY, b"\xff\xff\xff\xff", rsv=0x40),  # not deflate: 1007
            masked(Opcode.TEXT, b"\xff" * 2000),  # not UTF-8: 1007
            masked(Opcode.PING, b"p"),
            masked(Opcode.CLOSE, close_payload(1000, None)),
        )
    )
    arriving = masked(Opcode.TEXT, b"\xff" * 4000)  # not UTF-8 either, and still arriving
    assert drain(reader, data + arriving[:100]) == [
        [(Opcode.PING, b"p"), (Opcode.CLOSE, close_payload(1000, None))]
    ]
    assert reader.feed(arriving[100:3000]) == []


def test_one_frame_that_inflates_to_much_comes_out_over_slices() -> None:
    # 3.5 MiB of two-byte characters in one compressed frame, then a ping and a message in
    # the same read: the frame is inflated a slice's room at a time, its text checked
    # across the pieces' edges, and what follows it comes after it, in order.
    text = ("é" * (7 * FEED_MAX_INFLATED // 4)).encode()
    data = (
        masked(Opcode.TEXT, deflated(text), rsv=0x40)
        + masked(Opcode.PING, b"p")
        + masked(Opcode.BINARY, b"after")
    )
    reader = FrameReader(8 << 20, PerMessageDeflate({}))
    slices = drain(reader, data)
    assert [len(part) for part in slices] == [0, 0, 0, 3]
    assert slices[-1] == [
        (Opcode.TEXT, text.decode()),
        (Opcode.PING, b"p"),
        (Opcode.BINARY, b"after"),
    ]
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("payload", "code", "slices"),
    [
        (b"\x00" * (5 << 20), 1009, 4),  # over max_size: refused within the slice it passes it
        # Inflating 3.9 MiB takes four slices; invalid UTF-8 in the third fails there.
        (b"a" * (3 << 20) + b"\xff" + b"a" * (900 << 10), 1007, 3),
    ],
    ids=["bomb", "utf8"],
)
def test_a_frame_inflating_over_slices_fails_where_it_goes_wrong(
    payload: bytes, code: int, slices: int
) -> None:
    reader = FrameReader(4 << 20, PerMessageDeflate({}))
    parts = drain(reader, masked(Opcode.TEXT, deflated(payload), rsv=0x40))
    assert len(parts) == slices
    assert all(part == [] for part in parts[:-1])
    [(opcode, error)] = parts[-1]
    assert opcode is None and error.code == code
    assert not reader.backlog and reader.feed(b"more") == []


def test_a_frame_inflating_over_slices_then_no_context_takeover() -> None:
    # The decompressor is reset after each message (client_no_context_takeover), also
    # when the message's last frame was inflated in pieces.
    reader = FrameReader(8 << 20, PerMessageDeflate({"client_no_context_takeover": None}))
    first = os.urandom(FEED_MAX_INFLATED).hex().encode()  # 2 MiB that deflate little
    second = b"second"
    data = masked(Opcode.BINARY, deflated(first), rsv=0x40)
    data += masked(Opcode.BINARY, deflated(second), rsv=0x40)
    events = [event for part in drain(reader, data) for event in part]
    assert events == [(Opcode.BINARY, first), (Opcode.BINARY, second)]


def test_closing_while_a_frame_inflates_over_slices_drops_the_rest_of_it() -> None:
    reader = FrameReader(8 << 20, PerMessageDeflate({}))
    bomb = masked(Opcode.BINARY, deflated(b"\x00" * (6 << 20)), rsv=0x40)
    close = masked(Opcode.CLOSE, close_payload(1000, None))
    assert reader.feed(bomb + close) == []
    assert reader.backlog
    # What came out so far, what the frame has left to inflate, and the close behind it.
    assert reader.deflate is not None and reader.deflate.unconsumed > 0
    assert reader.buffered == FEED_MAX_INFLATED + 1 + reader.deflate.unconsumed + len(close)
    reader.discard_data()
    assert reader.feed(b"") == [(Opcode.CLOSE, close_payload(1000, None))]
    assert not reader.backlog and reader.buffered == 0


def test_a_violation_in_a_backlog_ends_it() -> None:
    reader = FrameReader(1000)
    data = masked(Opcode.BINARY, b"x") * (FEED_MAX_FRAMES + 1) + masked(0x3, b"")
    slices = drain(reader, data)
    assert len(slices) == 2
    [(_, last), (opcode, error)] = slices[1]
    assert last == b"x" and opcode is None and error.code == CloseCode.PROTOCOL_ERROR
    assert not reader.backlog and reader.feed(masked(Opcode.BINARY, b"more")) == []


def test_a_read_of_fragments_comes_out_in_slices_too() -> None:
    # Frames that complete no message (here, empty fragments) are work all the same: a
    # read of them is served in slices, not parsed in one turn of the loop.
    reader = FrameReader(1000)
    empty = masked(Opcode.CONTINUATION, b"", fin=False)
    data = masked(Opcode.BINARY, b"a", fin=False) + empty * (3 * FEED_MAX_FRAMES)
    slices = drain(reader, data + masked(Opcode.CONTINUATION, b"b"))
    assert len(slices) == 4
    assert slices[-1] == [(Opcode.BINARY, b"ab")]


@pytest.mark.parametrize(
    ("opcode", "piece"),
    [(Opcode.BINARY, b""), (Opcode.BINARY, b"x"), (Opcode.TEXT, "\u20ac".encode())],
)
def test_fragments_are_held_in_about_their_own_size(opcode: int, piece: bytes) -> None:
    # A message sent in 1-byte fragments, or a message never finished in endless empty
    # ones, costs about its own size, not an object per fragment (40 bytes a byte, or 8
    # bytes an empty fragment with no bound at all).
    count = 20_000
    reader = FrameReader(1 << 20)
    assert reader.feed(masked(opcode, piece, fin=False)) == []
    data = masked(Opcode.CONTINUATION, piece, fin=False) * count
    tracemalloc.start()
    try:
        assert [event for part in drain(reader, data) for event in part] == []
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 2 * count * len(piece) + 64 * 1024
    [(kind, message)] = reader.feed(masked(Opcode.CONTINUATION, b"", fin=True))
    assert kind == opcode
    whole = piece * (count + 1)
    assert message == (whole.decode() if opcode == Opcode.TEXT else whole)


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        (
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        ),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=abc", None),
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; unknown=1", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        (
            "permessage-deflate; client_max_window_bits=99, permessage-deflate",
            "permessage-deflate",
        ),
        ("x-webkit-deflate-frame", None),
    ],
)
def test_deflate_negotiation(offer: str, answer: str | None) -> None:
    negotiated = negotiate_deflate(offer)
    assert (negotiated[1] if negotiated else None) == answer


# RFC 6455 section 5.2: a 7-bit length up to 125; 126 and a 16-bit length up to 65535;
# 127 and a 64-bit length beyond.
LENGTH_BOUNDARIES = [
    (125, b"\x7d"),
    (126, b"\x7e\x00\x7e"),
    (65535, b"\x7e\xff\xff"),
    (65536, b"\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
]


@pytest.mark.parametrize(("length", "encoded"), LENGTH_BOUNDARIES)
def test_server_frame_lengths_at_the_encoding_boundaries(length: int, encoded: bytes) -> None:
    assert frame_header(Opcode.BINARY, length) == b"\x82" + encoded
    payload = os.urandom(length)
    assert encode_frame(Opcode.BINARY, payload) == b"\x82" + encoded + payload


@pytest.mark.parametrize(("length", "encoded"), LENGTH_BOUNDARIES)
def test_client_frames_at_the_length_boundaries_are_read_whole(length: int, encoded: bytes) -> None:
    payload = os.urandom(length)
    frame = masked(Opcode.BINARY, payload)
    assert frame[1:2] + frame[2 : 1 + len(encoded)] == bytes([0x80 | encoded[0]]) + encoded[1:]
    reader = FrameReader(1 << 20, None)
    # In two reads, split inside the extended length when there is one.
    assert reader.feed(frame[:3]) == []
    assert reader.feed(frame[3:]) == [(Opcode.BINARY, payload)]


def test_server_frames_are_unmasked_with_the_right_length_encoding() -> None:
    assert encode_frame(Opcode.TEXT, b"hi") == b"\x81\x02hi"
    assert encode_frame(Opcode.BINARY, b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert encode_frame(Opcode.BINARY, b"x" * 70000)[:2] == b"\x82\x7f"
