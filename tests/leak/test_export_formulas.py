"""A CSV export starts no spreadsheet formula, and a copy of it is still traced.

Addresses and notes are free text: a resident's notes reading
``=HYPERLINK("http://…")`` ran as a formula in the spreadsheet of whoever
received the export. Such cells are written with a leading ``'``; the leak
check takes it off again, so the copy still matches its residents.
"""

from __future__ import annotations

import csv
from pathlib import Path

from leak.conftest import World, build_vault, ctx
from pivault.leak import exports as ex
from pivault.leak.check import affected, check
from pivault.leak.columns import FORMULA_START

HOSTILE = ['=HYPERLINK("http://example.invalid/x","details")', "+1+cmd|' /C calc'!A0",
           "-2+3", "@SUM(1,1)"]


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_cells_that_would_start_a_formula_are_written_as_text_and_the_copy_is_traced(
        tmp_path: Path, sqlite_url: str) -> None:
    w: World = build_vault(tmp_path, sqlite_url, count=600, seed=23)
    v = w.vault
    try:
        hostile = [r.record_id for r in w.residents[:40]]
        for i, rid in enumerate(hostile):
            h = HOSTILE[i % len(HOSTILE)]
            # the address keeps its real start (a province) behind the formula, as a typed one would
            v.update(rid, {"address": h + w.residents[i].address if w.residents[i].address else h,
                           "notes": h}, ctx=ctx("registrar-1", "operator"))
        sel = [r.record_id for r in w.residents[:300]]
        req = ex.request(v, ex.Selection(record_ids=tuple(sel)), recipient="statistics office",
                         purpose="research", fields=["name", "address", "notes"], ctx=ctx("req-1"))
        ex.approve(v, req.export_id, ctx=ctx("approver-1", "approver"))
        out = tmp_path / "export.csv"
        ex.fetch(v, req.export_id, out, ctx=ctx("req-1"))

        header, rows = _rows(out)
        assert header == ["name", "address", "notes"]
        cells = [c for r in rows for c in r]
        assert not [c for c in cells if c.startswith(FORMULA_START)]
        quoted = [c for c in cells if c.startswith("'")]
        assert len(quoted) >= 2 * len(hostile)  # each hostile resident's address and notes
        assert {c[1:2] for c in quoted} == {"=", "+", "-", "@"}

        res = check(v, [out], ctx=ctx("dpo-1", "dpo"))
        assert res.attribution is not None and res.attribution.verdict == "attributed"
        assert [(f.kind, f.source_id) for f in res.attribution.named] == [("export", req.export_id)]
        # the residents behind the quoted cells are found by their name and address as stored
        found = set(affected(v, res.case_id, ctx=ctx("dpo-1", "dpo")))
        assert set(hostile) <= found
    finally:
        v.close()
