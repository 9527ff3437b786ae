from __future__ import annotations

from common.storage import MAX_PART_SIZE, MIN_PART_SIZE, part_size_for

MIB = 1024 * 1024
TIB = 1024**4


def capacity(base: int, max_parts: int) -> int:
    return sum(part_size_for(n, base, max_parts) for n in range(1, max_parts + 1))


def test_small_streams_use_the_base_part_size() -> None:
    assert part_size_for(1, 16 * MIB, 10000) == 16 * MIB
    assert part_size_for(1000, 16 * MIB, 10000) == 16 * MIB
    assert part_size_for(1001, 16 * MIB, 10000) == 32 * MIB


def test_part_size_never_leaves_s3_bounds() -> None:
    assert part_size_for(1, 1, 10000) == MIN_PART_SIZE
    assert part_size_for(10000, 5 * 1024 * MIB, 10000) == MAX_PART_SIZE


def test_a_5_tib_stream_fits_within_aws_part_limit() -> None:
    assert capacity(8 * MIB, 10000) > 5 * TIB


def test_a_store_with_fewer_parts_still_holds_terabytes() -> None:
    assert capacity(16 * MIB, 1000) > 1 * TIB
