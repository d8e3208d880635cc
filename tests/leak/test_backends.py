"""Exports, leak check and cases on both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from leak.conftest import build_vault, ctx
from pivault.leak import exports as ex
from pivault.leak.check import affected, check
from pivault.leak.report import write_report


def test_export_check_and_case_on_each_backend(store_url: str, tmp_path: Path) -> None:
    w = build_vault(tmp_path, store_url, count=3000, seed=5)
    v = w.vault
    try:
        ids = [r.record_id for r in w.residents]
        req = ex.request(v, ex.Selection(record_ids=tuple(ids[:2500])), recipient="R", purpose="p",
                         fields=["name", "id_number", "mobile"], ctx=ctx("req"))
        ex.approve(v, req.export_id, ctx=ctx("boss", "approver"))
        out = tmp_path / "e.jsonl"
        info = ex.fetch(v, req.export_id, out, ctx=ctx("req"))
        assert info.rows == 2500
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 2500 + (info.canaries or 0)
        dump = tmp_path / "d.csv"
        import json

        with open(dump, "w", encoding="utf-8", newline="") as f:
            wr = csv.writer(f)
            for line in random.Random(1).sample(lines, 300):
                o = json.loads(line)
                wr.writerow([o["id_number"], o["name"], o["mobile"]])
        res = check(v, [dump], ctx=ctx("dpo", "dpo"))
        assert res.attribution is not None
        assert [f.source_id for f in res.attribution.named] == [req.export_id]
        assert len(affected(v, res.case_id, ctx=ctx("dpo", "dpo"))) == res.residents_matched
        html, js = write_report(v, res.case_id, tmp_path / "rep", ctx=ctx("dpo", "dpo"), contact="DPO")
        assert html.exists() and js.exists()
    finally:
        v.close()


def test_matching_during_a_blind_index_key_rotation(sqlite_url: str, tmp_path: Path) -> None:
    """Entries still under the old key (rotation not yet rebuilt) are found, through the store."""
    w = build_vault(tmp_path, sqlite_url, count=1500, seed=8)
    v = w.vault
    try:
        dump = tmp_path / "d.csv"
        dump.write_text("".join(f"{r.name},{r.id_number}\n" for r in w.residents[:400]), encoding="utf-8")
        before = check(v, [dump], ctx=ctx("dpo", "dpo"), save=False).residents_matched
        v.keyring.rotate("prf.id_number")
        after = check(v, [dump], ctx=ctx("dpo", "dpo"), save=False)
        assert before >= 395 and after.residents_matched == before
    finally:
        v.close()
