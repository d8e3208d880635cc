"""Key extraction for matching: batch and per-row forms agree, with messy values."""

from __future__ import annotations

import random

from leak.synthetic import people
from pivault.leak.match import Keys, batch_keys, row_keys


def test_batch_keys_equal_row_keys() -> None:
    rng = random.Random(4)
    rows: list[list[str | None]] = []
    for p in people(2000, seed=12):
        idn = p["id_number"].lower() if rng.random() < 0.3 else p["id_number"]
        mob = rng.choice([p["mobile"], f"+86 {p['mobile']}", "", "garbage"])
        born = rng.choice(["", "1990-01-02", "1990年1月2日", None])
        row: list[str | None] = [p["name"], rng.choice([idn, "", None, "123"]), mob, born, p["address"]]
        rows.append(row[: rng.randrange(2, 6)])
    cols = {"name": 0, "id_number": 1, "mobile": 2, "birth_date": 3, "address": 4}
    assert batch_keys(rows, cols) == [row_keys(r, cols) for r in rows]
    k = Keys("x", None, "张三", "1990-01-02")
    assert k.name_birth == "张三|1990-01-02" and k.count() == 2
