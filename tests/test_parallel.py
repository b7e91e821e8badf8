"""bounded_map: ordered, bounded, stops on errors and when the consumer leaves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from embedloom.parallel import bounded_map


def test_results_come_out_in_input_order() -> None:
    def square(chunk: list[int]) -> list[int]:
        return [x * x for x in chunk]

    assert list(bounded_map(square, range(1000), workers=4, chunk_size=7)) == [
        x * x for x in range(1000)
    ]


def test_never_more_than_max_in_flight_chunks_between_reading_and_writing() -> None:
    read = 0
    consumed = 0
    most_ahead = 0
    lock = threading.Lock()

    def source() -> Iterator[int]:
        nonlocal read, most_ahead
        for item in range(200):
            with lock:
                read += 1
                most_ahead = max(most_ahead, read - consumed)
            yield item

    for _ in bounded_map(lambda chunk: chunk, source(), workers=3, max_in_flight=4, chunk_size=5):
        with lock:
            consumed += 1
    # Read ahead of the consumer: at most 4 chunks of 5, counting the one it reads.
    assert most_ahead <= 4 * 5


def test_an_error_in_a_chunk_stops_the_reading_and_reaches_the_consumer() -> None:
    read: list[int] = []

    def source() -> Iterator[int]:
        for item in range(10_000):
            read.append(item)
            yield item

    def fragile(chunk: list[int]) -> list[int]:
        if 50 in chunk:
            raise ValueError("bad item 50")
        return chunk

    with pytest.raises(ValueError, match="bad item 50") as raised:
        list(bounded_map(fragile, source(), workers=2, max_in_flight=3, chunk_size=10))
    assert len(read) <= 10 * (6 + 3)  # stopped soon after, not read to the end
    assert "fragile" in str(raised.traceback[-1].name)


def test_closing_the_consumer_stops_everything_and_leaves_no_thread() -> None:
    threads_before = threading.active_count()
    results = bounded_map(lambda chunk: chunk, iter(range(10_000)), workers=3, chunk_size=10)
    assert next(results) == 0
    results.close()
    assert threading.active_count() == threads_before


def test_chunk_size_has_a_floor() -> None:
    sizes: list[int] = []

    def record(chunk: list[int]) -> list[int]:
        sizes.append(len(chunk))
        return chunk

    list(bounded_map(record, range(100), chunk_size=1, min_chunk_size=25))
    assert sizes == [25, 25, 25, 25]


_EIGHT_MB_ITEMS = """
from embedloom.parallel import bounded_map

def peak_kb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, from the test runner,
    # whose own peak would hide this process's growth.
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])

def allocate(chunk):
    # Each item holds 8 MB, every page touched, until it is written out.
    return [bytearray(b"x") * (8 * 1024 * 1024) for _ in chunk]

before = peak_kb()
for buffer in bounded_map(allocate, range(10_000), workers=4, max_in_flight=4, chunk_size=1):
    assert len(buffer) == 8 * 1024 * 1024
print((peak_kb() - before) // 1024)
"""


def test_ten_thousand_items_of_8_mb_hold_about_max_in_flight_of_them() -> None:
    # The rayon failure, in Python: unbounded, this would want 80 GB. The allocator
    # is told to keep freed 8 MB blocks for reuse (instead of handing them back and
    # having the kernel zero 80 GB of fresh pages, 40 s of CI); the price is some
    # fragmentation in the bound below.
    allocator = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    out = subprocess.run(
        [sys.executable, "-c", _EIGHT_MB_ITEMS],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **allocator},
    )
    growth_mb = int(re.findall(r"\d+", out.stdout)[-1])
    # max_in_flight (4) × 8 MB live at once; allow 25 items' worth for the
    # allocator's fragmentation: three orders of magnitude under unbounded.
    assert growth_mb <= 25 * 8, growth_mb
