"""Record ids: opaque, unguessable, and in creation order (for B-tree locality)."""

from __future__ import annotations

import time

import pytest

from pivault.model.record import _B32, _id_second, is_record_id, new_record_id


def test_format_and_uniqueness() -> None:
    ids = [new_record_id() for _ in range(20_000)]
    assert all(is_record_id(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # made within the same second or two: the random part differs in every character position
    tails = {i[9:] for i in ids}
    assert len(tails) == len(ids)
    assert all(len(set(i[k] for i in ids)) == 32 for k in range(10, 28))


def test_ids_sort_in_creation_order() -> None:
    t = time.time()
    early = [new_record_id(t - 3600) for _ in range(200)]
    now = [new_record_id() for _ in range(200)]
    later = [new_record_id(t + 86_400 * 365) for _ in range(200)]
    assert max(early) < min(now) and max(now) < min(later)
    assert {_id_second(i) for i in early} == {int(t - 3600)}
    assert all(abs(_id_second(i) - t) <= 2 for i in now)
    # the alphabet's characters are in ASCII order, so text order is number order
    assert list(_B32) == sorted(_B32)


def test_the_time_is_a_second_after_1970() -> None:
    assert _id_second(new_record_id(0)) == 0
    with pytest.raises(ValueError):
        new_record_id(-1)
    with pytest.raises(ValueError):
        new_record_id(float(2**35))
