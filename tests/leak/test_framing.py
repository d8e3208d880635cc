"""Framing with record ids: a list of ids names no principal and no export.

The store keeps each record's id in clear and the audit trail lists, in clear, the ids every
principal and every export fetch was served. Whoever can read either can write a "dump" of
ids that fits a reader or an export perfectly; only values of the residents show who copied
their data.
"""

from __future__ import annotations

import random
from pathlib import Path

from leak.conftest import build_vault, ctx
from pivault.leak import exports as ex
from pivault.leak.check import check


def test_record_ids_alone_name_no_principal_and_no_export(store_url: str, tmp_path: Path) -> None:
    w = build_vault(tmp_path, store_url, count=3000, seed=31)
    v = w.vault
    try:
        by_id = {r.record_id: r for r in w.residents}
        ids = [r.record_id for r in w.residents]
        officer = ids[100:400]
        for rid in officer:
            v.get(rid, ctx=ctx("officer-9", "officer"))
        # a small export: a sample of it may well miss its three canaries
        req = ex.request(v, ex.Selection(record_ids=tuple(ids[1000:1120])), recipient="R",
                         purpose="research", fields=["name", "id_number", "mobile"], ctx=ctx("req"))
        ex.approve(v, req.export_id, ctx=ctx("boss", "approver"))
        ex.fetch(v, req.export_id, tmp_path / "export.csv", ctx=ctx("req"))
        rng = random.Random(4)

        def framed(name: str, picked: list[str]) -> Path:
            # ids as the audit trail lists them, and a column with nothing of the residents
            path = tmp_path / name
            path.write_text("record_id,gender\n" + "".join(f"{r},M\n" for r in picked), encoding="utf-8")
            return path

        for path, source in ((framed("reader.csv", rng.sample(officer, 150)), "officer-9"),
                             (framed("export.csv.txt", rng.sample(ids[1000:1120], 80)), req.export_id)):
            res = check(v, [path], ctx=ctx("dpo", "dpo"), save=False)
            assert res.matched_by.keys() == {"record_id"}
            assert res.attribution is not None
            assert res.attribution.named == [], res.attribution.to_dict()
            assert res.attribution.verdict == "weak"
            weak = {f.source_id: f for f in res.attribution.findings}
            assert "record ids" in weak[source].evidence["why_not_named"]
            assert weak[source].evidence["matched_inside_by_value"] == 0

        # the residents' values still name the reader, with their ids beside them or not
        rows = [by_id[r] for r in rng.sample(officer, 150)]
        valued = tmp_path / "values.csv"
        valued.write_text("".join(f"{r.record_id},{r.name},{r.id_number}\n" for r in rows), encoding="utf-8")
        res = check(v, [valued], ctx=ctx("dpo", "dpo"), save=False)
        assert res.attribution is not None
        assert [(f.kind, f.source_id) for f in res.attribution.named] == [("principal", "officer-9")]

        # ids of the reader's records padded with a few values of others: still no name
        others = [by_id[r] for r in ids[2000:2012]]
        mixed = tmp_path / "mixed.csv"
        mixed.write_text("".join(f"{r},,\n" for r in rng.sample(officer, 150))
                         + "".join(f"{r.record_id},{r.name},{r.id_number}\n" for r in others),
                         encoding="utf-8")
        res = check(v, [mixed], ctx=ctx("dpo", "dpo"), save=False)
        assert res.attribution is not None and res.attribution.named == []
    finally:
        v.close()
