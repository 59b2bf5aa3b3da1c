"""The spool file and the record encoding, on a real file system without a database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.store.test_backends import closed, opened
from tornado_echo.errors import StoreError
from tornado_echo.store import MessageReceived, Spool, spool_path
from tornado_echo.store.records import Record, decode_record, encode_record

RECORDS: list[Record] = [
    opened("6f1c1d1e-0000-4000-8000-000000000001"),
    MessageReceived("6f1c1d1e-0000-4000-8000-000000000001", 1, time.time(), 2, 3, b"\x00\xff\n"),
    MessageReceived("6f1c1d1e-0000-4000-8000-000000000001", 2, time.time(), 1, 7, None),
    closed("6f1c1d1e-0000-4000-8000-000000000001"),
]


TRUNCATED = MessageReceived(
    "6f1c1d1e-0000-4000-8000-000000000001", 3, time.time(), 2, 9000, b"\x00" * 10, True
)


@pytest.mark.parametrize(
    "record", [*RECORDS, TRUNCATED], ids=["opened", "full", "meta", "closed", "truncated"]
)
def test_records_survive_the_spool_encoding(record: Record) -> None:
    line = encode_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line) == record


def test_a_journal_line_spooled_before_the_truncated_field_still_decodes() -> None:
    line = b'["m","6f1c1d1e-0000-4000-8000-000000000001",1,1.5,2,3,"AAEC"]\n'
    record = decode_record(line)
    assert isinstance(record, MessageReceived)
    assert (record.payload, record.truncated) == (b"\x00\x01\x02", False)


@pytest.mark.parametrize("line", [b"", b"{}", b'["x", 1]', b'["m", "id", 1]', b"\xff"])
def test_garbage_is_not_a_record(line: bytes) -> None:
    with pytest.raises(StoreError, match="not a spool record"):
        decode_record(line)


def test_each_worker_gets_its_own_file(tmp_path: Path) -> None:
    paths = {spool_path(tmp_path, f"web-1.example:8080:{worker}") for worker in range(4)}
    assert len(paths) == 4
    assert spool_path(tmp_path, "h/../x:1:0").name == "spool-h_.._x_1_0.jsonl"
    assert all(path.parent == tmp_path for path in paths)


def test_append_read_commit_and_reset(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s" / "spool.jsonl")
    spool.open()
    spool.open()  # idempotent
    assert spool.append(RECORDS) is None
    spool.sync()
    assert (spool.pending, spool.oldest) == (4, RECORDS[0].at)
    first = spool.read(3)
    assert (first.records, first.lines) == (RECORDS[:3], 3)
    spool.commit(first)
    assert spool.pending == 1 and spool.pending_bytes == len(encode_record(RECORDS[3]))
    rest = spool.read(3)
    assert rest.records == RECORDS[3:]
    spool.commit(rest)
    assert (spool.pending, spool.pending_bytes, spool.oldest) == (0, 0, None)
    assert spool.path.stat().st_size == 0  # fully replayed: truncated
    spool.close()
    spool.close()  # idempotent
    assert not spool.path.exists()  # and removed when closed empty


def test_leftover_is_counted_and_a_torn_tail_cut(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(b"".join(map(encode_record, RECORDS)) + b'["o","6f1c')
    spool = Spool(path)
    spool.open()
    assert spool.pending == 4
    assert path.read_bytes().endswith(b"\n")
    assert spool.read(100).records == RECORDS
    spool.close()
    assert path.exists()  # pending records stay for the next start


def test_corrupt_line_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    path.write_bytes(encode_record(RECORDS[0]) + b"garbage\n" + encode_record(RECORDS[3]))
    spool = Spool(path)
    spool.open()
    lease = spool.read(100)
    assert (lease.records, lease.lines) == ([RECORDS[0], RECORDS[3]], 3)
    spool.commit(lease)
    assert spool.pending == 0
    spool.close()


def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use spool file"):
        Spool(tmp_path / "file" / "spool.jsonl").open()


def test_one_process_at_a_time_uses_a_spool_file(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "host:0:0")
    first, second = Spool(path), Spool(path)
    first.open()
    with pytest.raises(StoreError, match="in use by another running instance"):
        second.open()
    assert path.exists() and not second.is_open  # the refused one took nothing with it
    first.close()
    second.open()
    second.close()


def spool_of(path: Path, copies: int) -> Spool:
    spool = Spool(path)
    spool.open()
    spool.append(RECORDS * copies)
    return spool


def test_a_deleted_file_under_a_lease_keeps_the_lease_and_counts_the_rest(tmp_path: Path) -> None:
    spool = spool_of(tmp_path / "spool.jsonl", 3)
    lease = spool.read(4)
    spool.path.unlink()
    assert spool.check() == 8  # the lease's four are in memory, not lost
    assert spool.pending == 4  # and in the new file again
    spool.append(RECORDS[:1])
    spool.commit(lease)  # stale: its offsets were the old file's
    assert spool.pending == 5
    again = spool.read(100)
    assert again.records == [*RECORDS, RECORDS[0]]
    spool.commit(again)
    assert spool.pending == 0
    spool.close()


def test_a_file_cut_inside_the_lease_keeps_the_lease_whole(tmp_path: Path) -> None:
    spool = spool_of(tmp_path / "spool.jsonl", 3)
    spool.commit(spool.read(4))
    lease = spool.read(4)
    data = spool.path.read_bytes()
    cut = len(b"".join(map(encode_record, RECORDS))) + len(encode_record(RECORDS[0]))
    with spool.path.open("r+b") as handle:  # one line of the lease left, then nothing
        handle.truncate(cut)
    assert spool.check() == 4  # the third copy
    spool.commit(lease)
    assert spool.read(100).records == RECORDS  # the lease, once, after the committed lines
    assert spool.path.read_bytes()[:cut] == data[:cut]
    spool.close()


def test_a_file_cut_after_the_lease_keeps_its_offsets(tmp_path: Path) -> None:
    spool = spool_of(tmp_path / "spool.jsonl", 3)
    lease = spool.read(4)
    with spool.path.open("r+b") as handle:
        handle.truncate(lease.end + len(encode_record(RECORDS[0])))
    assert spool.check() == 7  # 12 pending, the lease and one line left
    spool.commit(lease)
    assert spool.read(100).records == RECORDS[:1]
    spool.close()
