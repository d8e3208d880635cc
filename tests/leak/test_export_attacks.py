"""An insider against the two-person rule: what an export's steps let one person do alone."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.audit import entries
from pivault.leak import exports as ex
from pivault.leak.exports import ExportError
from pivault.model import Resident
from pivault.synth import generate
from pivault.vault.facade import seal


@pytest.fixture
def small(tmp_path: Path, store_url: str) -> Iterator[World]:
    w = build_vault(tmp_path, store_url, count=1500, seed=5)
    yield w
    w.vault.close()


def _approved(w: World, region: str = "11", fields: tuple[str, ...] = ("name", "id_number")) -> str:
    req = ex.request(w.vault, ex.Selection(regions=(region,)), recipient="Institute X", purpose="audit",
                     fields=list(fields), ctx=ctx("carol", "approver"))
    ex.approve(w.vault, req.export_id, ctx=ctx("erin", "dpo"))
    return req.export_id


def test_every_step_names_its_export_in_the_audit_trail(small: World, tmp_path: Path) -> None:
    """Who asked for, decided on and fetched which export: the tamper-evident trail says it,
    not only the exports table, which anyone with write access to the database can edit."""
    v = small.vault
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    x = req.export_id
    with pytest.raises(ExportError, match="two-person"):
        ex.approve(v, x, ctx=ctx("carol", "approver"))
    ex.approve(v, x, ctx=ctx("erin", "dpo"))
    with pytest.raises(ExportError, match="approved"):  # approving twice
        ex.approve(v, x, ctx=ctx("frank", "dpo"))
    with pytest.raises(ExportError, match="requester"):
        ex.fetch(v, x, tmp_path / "y.csv", ctx=ctx("erin", "dpo"))
    ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))

    def named(op: str, principal: str, outcome: str) -> bool:
        return any(x in e.record_ids for e in entries(v.db, operation=op, principal=principal,
                                                      outcome=outcome))

    assert named("export.request", "carol", "ok")
    assert named("export.approve", "carol", "denied")
    assert named("export.approve", "erin", "ok")
    assert named("export.approve", "frank", "denied")
    assert named("export.fetch", "erin", "denied")
    assert named("export.fetch", "carol", "ok")


def test_records_added_after_approval_are_not_exported(small: World, tmp_path: Path) -> None:
    """The approver agreed to the residents the selection held when they approved; residents
    registered since (perhaps by the requester) are not part of that decision."""
    v = small.vault
    region = "11"
    before = sum(1 for r in small.residents if (r.id_number or "").startswith(region))
    assert before > 0
    x = _approved(small, region)
    newcomers = [Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                                 ("name", "id_number", "mobile", "address", "notes")})
                 for row in generate(4000, 99)]
    newcomers = [r for r in newcomers if (r.id_number or "").startswith(region)
                 and r.id_number not in {s.id_number for s in small.residents}][:50]
    assert newcomers
    v.store.insert([seal(v.keyring, r) for r in newcomers])
    info = ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert info.rows == before
    with open(tmp_path / "x.csv", encoding="utf-8", newline="") as fh:
        got = {row["id_number"] for row in csv.DictReader(fh)}
    assert not got & {r.id_number for r in newcomers}


def test_terms_changed_in_the_database_after_approval_are_refused(small: World, tmp_path: Path) -> None:
    """Fields, recipient or purpose edited in the exports table after the approval, or a
    request marked approved by hand, are not what a second person agreed to."""
    v = small.vault
    x = _approved(small, "11", ("name", "id_number"))
    v.db.execute("UPDATE exports SET fields = ? WHERE export_id = ?",
                 (json.dumps(["name", "id_number", "mobile", "address", "notes"]), x))
    with pytest.raises(ExportError, match="agreed") as exc:
        ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.tampered"
    assert not (tmp_path / "x.csv").exists()

    y = _approved(small, "11")
    v.db.execute("UPDATE exports SET recipient = 'Broker Y' WHERE export_id = ?", (y,))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, y, tmp_path / "y.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.tampered"

    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    v.db.execute("UPDATE exports SET status = 'approved', approver = 'erin' WHERE export_id = ?",
                 (req.export_id,))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, req.export_id, tmp_path / "z.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.tampered"


def test_a_fetched_export_set_back_to_approved_is_not_fetched_again(small: World, tmp_path: Path) -> None:
    v = small.vault
    x = _approved(small, "11")
    ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    v.db.execute("UPDATE exports SET status = 'approved' WHERE export_id = ?", (x,))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "again.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state"
    assert not (tmp_path / "again.csv").exists()
