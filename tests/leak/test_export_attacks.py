"""An insider against the two-person rule: what an export's steps let one person do alone."""

from __future__ import annotations

import csv
import errno
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leak.conftest import AuditingGuard, World, build_vault, ctx
from pivault.audit import AuditLog, entries
from pivault.leak import exports as ex
from pivault.leak.exports import ExportError
from pivault.model import Resident
from pivault.policy.context import AccessContext
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


def test_a_fetched_export_made_to_look_unfetched_is_not_fetched_again(small: World,
                                                                     tmp_path: Path) -> None:
    """With write access to the database (not the keyring), the requester sets a fetched export
    back to approved and deletes what its fetch stored (canaries, members, row keys): the
    approval itself is intact. A second fetch would hand out a second copy with other
    canaries, and the registry would know only one of them. The audit trail says the export
    was fetched: the second fetch is refused and writes nothing."""
    v = small.vault
    x = _approved(small, "11")
    first = ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    v.db.execute("UPDATE exports SET status = 'approved', fetched_by = NULL, fetched_at = NULL"
                 " WHERE export_id = ?", (x,))
    v.db.execute("DELETE FROM export_members WHERE export_id = ?"
                 " AND kind IN ('canaries', 'members', 'rowkeys')", (x,))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "again.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state" and "audit trail" in str(exc.value)
    assert not (tmp_path / "again.csv").exists()
    assert not [p for p in tmp_path.iterdir() if "again" in p.name]
    assert len(list(entries(v.db, operation="export", principal="carol", outcome="ok"))) == 1
    assert first.rows


# ---------------------------------------------------------------- what the approver approves


def _region_ids(w: World, region: str) -> set[str]:
    return {r.record_id for r in w.residents if (r.id_number or "").startswith(region)}


def _newcomer(w: World, region: str, seed: int = 99) -> Resident:
    """A synthetic resident of ``region`` whose ID number the vault does not hold."""
    held = {r.id_number for r in w.residents}
    for row in generate(4000, seed):
        r = Resident.parse({k: row[k] or None for k in  # type: ignore[literal-required]
                            ("name", "id_number", "mobile", "address", "notes")})
        if (r.id_number or "").startswith(region) and r.id_number not in held:
            return r
    raise AssertionError("no newcomer")


def _written_ids(path: Path) -> set[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return {row["id_number"] for row in csv.DictReader(fh)}


def test_the_approver_sees_the_count_and_approves_that_many(small: World, tmp_path: Path) -> None:
    """The request counts its selection; the list shows the count before anyone approves, the
    approval states it, and an approver can refuse to approve more than they saw."""
    v = small.vault
    region = "11"
    n = len(_region_ids(small, region))
    req = ex.request(v, ex.Selection(regions=(region,)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    assert req.selected == n
    assert [e.selected for e in ex.list_exports(v.db) if e.export_id == req.export_id] == [n]
    with pytest.raises(ExportError) as exc:
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), max_records=n - 1)
    assert exc.value.code == "export.count" and str(n) in str(exc.value)
    assert any(req.export_id in e.record_ids for e in entries(v.db, operation="export.approve",
                                                              principal="erin", outcome="denied"))
    ok = ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), max_records=n)
    assert ok.status == "approved" and ok.selected == n
    info = ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert info.rows == n and info.left_out == 0


def test_canary_residents_are_not_counted(small: World) -> None:
    """The count shown to the approver leaves the vault's canary residents out, as stats does:
    a count that moved with them would tell who holds the list which records are canaries."""
    from pivault.detect.canary import seed

    v = small.vault
    canaries = seed(v, 4, ctx=ctx("system:seed", "operator"), rng_seed=3)
    real = [r.record_id for r in small.residents[:20]]
    req = ex.request(v, ex.Selection(record_ids=tuple(real + canaries)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    assert req.selected == len(real)


def test_a_resident_corrected_into_an_approved_selection_is_not_exported(small: World,
                                                                         tmp_path: Path) -> None:
    """The approver agreed to the residents counted at request. A record created before the
    approval and corrected into the selection after it (a new ID number of the region) was
    never counted: it stays out. A counted record corrected out of the selection, or erased,
    is left out too, and the fetch says how many."""
    v = small.vault
    region = "11"
    counted = _region_ids(small, region)
    x = _approved(small, region)
    op = ctx("officer-1", "operator", "correction")
    outsider = next(r for r in small.residents if not (r.id_number or "").startswith(region))
    moved_in = _newcomer(small, region)
    v.update(outsider.record_id, {"id_number": moved_in.id_number}, ctx=op)
    insider = next(r for r in small.residents if r.record_id in counted)
    moved_out = _newcomer(small, "44", seed=7)
    v.update(insider.record_id, {"id_number": moved_out.id_number}, ctx=op)
    info = ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    got = _written_ids(tmp_path / "x.csv")
    assert moved_in.id_number not in got
    assert moved_out.id_number not in got and insider.id_number not in got
    assert info.rows == len(counted) - 1 and info.left_out == 1
    members = {rid for e in entries(v.db, operation="export", principal="carol", outcome="ok")
               for rid in e.record_ids}
    assert outsider.record_id not in members and insider.record_id not in members


def test_a_set_larger_than_the_approved_count_is_refused(small: World, tmp_path: Path) -> None:
    """The approval seals how many records it covers. Should the set kept with the request hold
    more by the fetch (records added to it by someone holding the keyring and the database),
    the fetch is refused, audited, and nothing is written."""
    v = small.vault
    region = "11"
    x = _approved(small, region)
    extra = _newcomer(small, region)
    v.store.insert([seal(v.keyring, extra)])
    chunks = v.db.query_one("SELECT COUNT(*) FROM export_members WHERE export_id = ? AND kind = 'selected'",
                            (x,))
    assert chunks is not None
    n = int(chunks[0])
    v.db.execute("INSERT INTO export_members (export_id, chunk, kind, data) VALUES (?, ?, 'selected', ?)",
                 (x, n, v.keyring.encrypt(f"export:{x}", f"selected.{n}", extra.record_id.encode("ascii"))))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.grown"
    assert not (tmp_path / "x.csv").exists()
    assert any(x in e.record_ids for e in entries(v.db, operation="export.fetch", principal="carol",
                                                  outcome="denied"))


# ---------------------------------------------------------------- deadlines


_INSTANT = ex.ExportSettings(fetch_within_days=1e-9, approve_within_days=1e-9)


def test_an_approval_not_fetched_in_time_expires(small: World, tmp_path: Path) -> None:
    v = small.vault
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    ok = ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), settings=_INSTANT)
    assert ok.expires_at is not None and ok.decided_at is not None
    time.sleep(0.01)
    assert [e.status for e in ex.list_exports(v.db) if e.export_id == req.export_id] == ["expired"]
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.expired"
    assert not (tmp_path / "x.csv").exists()
    assert any(req.export_id in e.record_ids for e in entries(v.db, operation="export.fetch",
                                                              principal="carol", outcome="denied"))
    assert not any(e.operation == "export" for e in entries(v.db, principal="carol"))


def test_a_deadline_moved_in_the_table_does_not_extend_the_approval(small: World, tmp_path: Path) -> None:
    """The deadline is sealed with the approval: a later one written into the plain table is
    not the approver's."""
    v = small.vault
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"), settings=_INSTANT)
    time.sleep(0.01)
    v.db.execute("UPDATE exports SET expires_at = ? WHERE export_id = ?",
                 (time.time() + 10**6, req.export_id))
    assert ex.get_export(v.db, req.export_id).status == "approved"
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, req.export_id, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.expired"


def test_the_default_window_and_a_request_nobody_decided_on(small: World) -> None:
    v = small.vault
    x = _approved(small, "11")
    info = ex.get_export(v.db, x)
    assert info.expires_at is not None and info.decided_at is not None
    assert info.expires_at - info.decided_at == pytest.approx(ex.FETCH_WITHIN_DAYS * 86400)
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"), settings=_INSTANT)
    time.sleep(0.01)
    assert ex.get_export(v.db, req.export_id).status == "expired"
    with pytest.raises(ExportError) as exc:
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
    assert exc.value.code == "export.expired"
    assert any(req.export_id in e.record_ids for e in entries(v.db, operation="export.approve",
                                                              principal="erin", outcome="denied"))


# ---------------------------------------------------------------- a fetch that fails part-way


class _DiskFillsGuard(AuditingGuard):
    """The tests' guard, but the disk fills after ``rows`` rows have been presented for writing
    (``on_full`` runs instead of raising, when given: another process takes the name)."""

    def __init__(self, log: AuditLog, rows: int, on_full: Callable[[], None] | None = None) -> None:
        super().__init__(log)
        self.left = rows
        self.on_full = on_full

    def mask(self, c: AccessContext, field: str, value: str | None) -> str | None:
        if c.reveal and field == "name":  # once a row
            self.left -= 1
            if self.left == 0:
                if self.on_full is None:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.on_full()
        return super().mask(c, field, value)


def test_a_fetch_that_fails_part_way_leaves_no_file_and_says_so(small: World, tmp_path: Path) -> None:
    """Rows were read and written when the disk filled: the trail already said the records
    left, so it says the fetch failed; no partial file is left; the export is fetched again."""
    v = small.vault
    x = _approved(small, "11")
    good = v.guard
    assert isinstance(good, AuditingGuard)
    v.guard = _DiskFillsGuard(good.log, rows=20)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()
    with pytest.raises(OSError, match="No space"):
        ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert list(out.parent.iterdir()) == []
    assert ex.get_export(v.db, x).status == "approved"
    assert any(x in e.record_ids for e in entries(v.db, operation="export.fetch", principal="carol",
                                                  outcome="error"))
    assert not v.db.query("SELECT kind FROM export_members WHERE export_id = ?"
                          " AND kind IN ('canaries', 'members', 'rowkeys')", (x,))
    v.guard = good
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert info.status == "fetched" and len(_written_ids(out)) == info.rows + (info.canaries or 0)
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]
    assert ex.load_registry(v).canary_counts[x] == info.canaries


def test_a_file_made_at_the_name_meanwhile_is_kept(small: World, tmp_path: Path) -> None:
    """Someone creates the output file while the export is written: it is not replaced; the
    fetch is undone and audited as failed."""
    v = small.vault
    x = _approved(small, "11")
    good = v.guard
    assert isinstance(good, AuditingGuard)
    out = tmp_path / "x.csv"
    v.guard = _DiskFillsGuard(good.log, rows=5, on_full=lambda: out.write_text("theirs\n"))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.exists"
    assert out.read_text() == "theirs\n"
    assert [p.name for p in tmp_path.iterdir() if "x.csv" in p.name] == ["x.csv"]  # no .part left
    assert ex.get_export(v.db, x).status == "approved"
    assert any(x in e.record_ids for e in entries(v.db, operation="export.fetch", outcome="error"))


def test_an_unwritable_directory_fails_before_anything_is_audited(small: World, tmp_path: Path) -> None:
    v = small.vault
    x = _approved(small, "11")
    with pytest.raises(OSError):
        ex.fetch(v, x, tmp_path / "missing" / "x.csv", ctx=ctx("carol", "approver"))
    assert ex.get_export(v.db, x).status == "approved"
    assert not list(entries(v.db, operation="export", principal="carol"))
    assert not list(entries(v.db, operation="export.fetch", principal="carol"))


def test_exports_from_before_counting_are_requested_again(small: World, tmp_path: Path) -> None:
    """A request made before requests were counted has no set to approve, and an approval given
    before approvals sealed their count and deadline has neither: both are refused, not guessed."""
    v = small.vault
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"))
    v.db.execute("DELETE FROM export_members WHERE export_id = ? AND kind = 'selected'", (req.export_id,))
    v.db.execute("UPDATE exports SET selected = NULL, expires_at = NULL WHERE export_id = ?",
                 (req.export_id,))
    with pytest.raises(ExportError) as exc:
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
    assert exc.value.code == "export.stale"

    x = _approved(small, "11")
    info = ex.get_export(v.db, x)
    row = v.db.query_one("SELECT selection FROM exports WHERE export_id = ?", (x,))
    assert row is not None
    import hashlib

    old_terms = json.dumps({"requester": info.requester, "recipient": info.recipient, "purpose": info.purpose,
                            "fields": list(info.fields), "approver": info.approver,
                            "selection": hashlib.sha256(bytes(row[0])).hexdigest()}, sort_keys=True)
    v.db.execute("UPDATE export_members SET data = ? WHERE export_id = ? AND kind = 'approval'",
                 (v.keyring.encrypt(f"export:{x}", "approval.0", old_terms.encode("utf-8")), x))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "x.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.stale"
    assert not (tmp_path / "x.csv").exists()


def test_an_interruption_after_the_file_got_its_name_does_not_undo_the_fetch(
        small: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file was linked to its name, then the fetch was interrupted (Ctrl-C, or the
    temporary name could not be removed). The file is out with its canaries: the export
    stays fetched with them registered, not approved again to be fetched a second time."""
    v = small.vault
    x = _approved(small, "11")
    real_unlink = Path.unlink

    once = [True]

    def interrupted(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".part") and (tmp_path / "out" / "x.csv").exists() and once.pop():
            raise KeyboardInterrupt  # the step after the link
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", interrupted)
    out = tmp_path / "out" / "x.csv"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert out.exists()
    info = ex.get_export(v.db, x)
    assert info.status == "fetched"
    assert ex.load_registry(v).canary_counts[x] == info.canaries
    assert len(_written_ids(out)) == (info.rows or 0) + (info.canaries or 0)
    assert not any(x in e.record_ids for e in entries(v.db, operation="export.fetch", outcome="error"))
    with pytest.raises(ExportError) as exc:
        ex.fetch(v, x, tmp_path / "again.csv", ctx=ctx("carol", "approver"))
    assert exc.value.code == "export.state"


def test_a_temporary_name_that_cannot_be_removed_leaves_the_export_fetched(
        small: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = small.vault
    x = _approved(small, "11")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".part"):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    out = tmp_path / "x.csv"
    info = ex.fetch(v, x, out, ctx=ctx("carol", "approver"))
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert info.status == "fetched" and out.exists()
    assert ex.load_registry(v).canary_counts[x] == info.canaries


def test_a_request_that_lapses_while_it_is_being_approved_is_not_approved(
        small: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The approval counts the request's set again before it is written, which takes a while
    for a large one: a request whose deadline passed meanwhile is not approved by it."""
    v = small.vault
    window = ex.ExportSettings(approve_within_days=0.3 / 86400)
    req = ex.request(v, ex.Selection(regions=("11",)), recipient="R", purpose="audit",
                     fields=["name", "id_number"], ctx=ctx("carol", "approver"), settings=window)
    real_shown = ex._shown

    def slow_count(vault: object, ids: list[str]) -> int:
        time.sleep(0.5)  # the deadline passes while the set is counted
        return real_shown(vault, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(ex, "_shown", slow_count)
    with pytest.raises(ExportError) as exc:
        ex.approve(v, req.export_id, ctx=ctx("erin", "dpo"))
    assert exc.value.code == "export.expired"
    assert ex.get_export(v.db, req.export_id).status == "expired"
    assert not v.db.query("SELECT 1 FROM export_members WHERE export_id = ? AND kind = 'approval'",
                          (req.export_id,))
