"""The policy file: strict validation, decisions, masks, explanations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pivault.policy import AccessContext, AccessDenied, Policy, PolicyError

RECORD = {
    "record_id": "r_0000000000000000000000000a", "name": "张三丰", "id_number": "11010519491231002X",
    "mobile": "13812345678", "address": "北京市东城区东华门街道1号", "notes": "synthetic note",
    "gender": "F", "birth_date": "1949-12-31", "region_code": "110105",
}


def ctx(role: str, purpose: str, *, reveal: bool = False) -> AccessContext:
    return AccessContext(principal="p1", role=role, purpose=purpose, reveal=reveal, source="api")


def test_default_policy_loads_with_shipped_roles() -> None:
    p = Policy.default()
    assert set(p.roles) == {"officer", "registrar", "dpo", "admin", "approver"}
    assert p.roles["admin"].fields == {}
    assert p.roles["admin"].operations == {"admin"}
    # the export approver decides on exports and sees no field itself
    assert p.roles["approver"].fields == {}
    assert p.roles["approver"].operations == {"export"}
    assert p.budgets_for("officer")["records_per_minute"] == 30


def test_officer_sees_masked_fields_only() -> None:
    d = Policy.default().authorise(ctx("officer", "identity_verification"), "lookup").check()
    shown = d.apply(RECORD)
    assert "notes" not in shown
    assert shown["record_id"] == RECORD["record_id"]
    # the number's ends and the region's province only: with the birth date a lookup by name
    # and birth date supplies, the default mask's last four and the county are the whole number
    assert shown["id_number"] == "1****************X"
    assert shown["region_code"] == "11****"
    assert shown["mobile"] == "138****5678"
    assert shown["name"] == "张**"
    assert shown["birth_date"] == "1949-**-**"
    assert shown["gender"] == "F"
    for f in ("name", "id_number", "mobile", "address"):
        assert shown[f] != RECORD[f]


def test_reveal_only_for_allowed_fields_and_purpose() -> None:
    p = Policy.default()
    d = p.authorise(ctx("officer", "case_investigation", reveal=True), "lookup").check()
    # the address gives the number away (its district is the number's county): revealed together
    assert d.revealed == {"mobile", "address", "id_number"}
    shown = d.apply(RECORD)
    assert shown["mobile"] == RECORD["mobile"] and shown["id_number"] == RECORD["id_number"]
    assert shown["name"] != RECORD["name"]
    denied = p.authorise(ctx("officer", "identity_verification", reveal=True), "lookup")
    assert not denied.allowed and denied.code == "policy.reveal"
    with pytest.raises(AccessDenied):
        denied.check()


@pytest.mark.parametrize(("role", "purpose", "op", "code"), [
    ("officer", "registration", "lookup", "policy.purpose"),
    ("officer", "case_investigation", "create", "policy.operation"),
    ("officer", "case_investigation", "erase", "policy.operation"),
    ("admin", "administration", "read", "policy.operation"),
    ("registrar", "registration", "erase", "policy.operation"),
    ("ghost", "x", "read", "policy.role"),
    # purposes tied to operations: an audit looks, only a data subject's request erases or corrects
    ("dpo", "audit", "erase", "policy.purpose"),
    ("dpo", "audit", "update", "policy.purpose"),
    ("dpo", "audit", "export", "policy.purpose"),
    ("registrar", "registration", "update", "policy.purpose"),
    ("registrar", "correction", "create", "policy.purpose"),
])
def test_refusals(role: str, purpose: str, op: str, code: str) -> None:
    d = Policy.default().authorise(ctx(role, purpose), op)
    assert not d.allowed
    assert d.code == code


def test_operations_allowed_for_their_own_purposes() -> None:
    p = Policy.default()
    for role, purpose, op in (("dpo", "data_subject_request", "erase"), ("dpo", "audit", "read"),
                              ("dpo", "audit", "lookup"), ("registrar", "correction", "update"),
                              ("registrar", "registration", "create"), ("registrar", "registration", "read")):
        assert p.authorise(ctx(role, purpose), op).allowed, (role, purpose, op)
    d = p.authorise(ctx("dpo", "audit"), "erase")
    assert d.reason == "role 'dpo' may erase only for: data_subject_request"
    dpo = next(r for r in p.explain() if r["role"] == "dpo")
    assert "erase only for data_subject_request" in dpo["purposes"]


def test_writable_fields_checked() -> None:
    text = Policy.default_text().replace(
        'writable = ["name", "id_number", "mobile", "address", "notes"]', 'writable = ["mobile", "address"]')
    p = Policy.loads(text)
    assert p.authorise(ctx("registrar", "correction"), "update", ["mobile"]).allowed
    d = p.authorise(ctx("registrar", "correction"), "update", ["name", "mobile"])
    assert not d.allowed and d.code == "policy.field"


def test_requested_field_subset() -> None:
    d = Policy.default().authorise(ctx("officer", "identity_verification"), "read", ["name", "notes"])
    assert set(d.fields) == {"name"}


BASE = """
[roles.r]
operations = ["lookup"]
purposes = ["p"]
[roles.r.fields]
name = "mask"
"""


@pytest.mark.parametrize(("text", "fragment"), [
    (BASE.replace('["lookup"]', '["lookup", "steal"]'), "unknown operation 'steal'"),
    (BASE.replace('name = "mask"', 'shoe_size = "mask"'), "unknown field 'shoe_size'"),
    (BASE.replace('name = "mask"', 'name = "rot13"'), "unknown mask 'rot13'"),
    (BASE.replace('["p"]', "[]"), "purposes is empty"),
    (BASE.replace("roles.r", "roles.anonymous"), "anonymous"),
    (BASE.replace("roles.r", 'roles."*"'), "anonymous"),
    (BASE.replace("roles.r", "roles.public"), "anonymous"),
    (BASE + "[roles.r.reveal]\nmobile = [\"p\"]\n", "does not see this field"),
    (BASE + "[roles.r.reveal]\nname = [\"q\"]\n", "not one of the role's purposes"),
    (BASE + "[roles.r.budgets]\nrecords_per_minute = -1\n", "non-negative"),
    (BASE + "[roles.r.budgets]\nbananas = 1\n", "unknown budget"),
    (BASE + "[roles.r.operation_purposes]\nerase = [\"p\"]\n", "may not erase"),
    (BASE + "[roles.r.operation_purposes]\nlookup = [\"q\"]\n", "not one of the role's purposes"),
    (BASE + "[roles.r.operation_purposes]\nlookup = []\n", "is empty"),
    (BASE.replace('operations = ["lookup"]', 'operations = ["admin"]'), "no operation that returns"),
    (BASE.replace("[roles.r.fields]", "colour = 1\n[roles.r.fields]"), "unknown key"),
    ("[policy]\nversion = 2\n" + BASE, "version"),
    ("[policy]\nversion = 1\n", "no roles"),
    ("not toml =", "not valid TOML"),
])
def test_invalid_policies_are_refused_with_a_clear_message(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as exc:
        Policy.loads(text)
    assert fragment in str(exc.value)


def test_top_level_budgets_are_passed_through(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text(BASE + "[budgets.r]\nrecords_per_minute = 5\nrecords_per_day = 100\n", encoding="utf-8")
    p = Policy.load(f)
    assert p.budgets_for("r") == {"records_per_minute": 5, "records_per_day": 100}
    with pytest.raises(PolicyError, match="given twice"):
        Policy.loads(BASE + "[roles.r.budgets]\nrecords_per_day = 1\n[budgets.r]\nrecords_per_day = 2\n")


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as exc:
        Policy.load(tmp_path / "absent.toml")
    assert exc.value.code == "policy.unreadable"


def test_a_policy_file_every_account_may_write_is_not_read(tmp_path: Path) -> None:
    """A policy file writable by every account of the host lets any of them widen every role at
    the service's next start or reload: it is refused, with what to do; a group-writable one
    (a shared admin group) is the operator's choice and is read."""
    path = tmp_path / "policy.toml"
    path.write_text(Policy.default_text(), encoding="utf-8")
    path.chmod(0o666)
    with pytest.raises(PolicyError) as exc:
        Policy.load(path)
    assert exc.value.code == "policy.writable" and "chmod o-w" in (exc.value.hint or "")
    path.chmod(0o664)
    assert Policy.load(path).roles.keys() == Policy.default().roles.keys()


def test_a_policy_file_of_another_account_is_not_read(tmp_path: Path) -> None:
    """Whoever may write the policy's directory can swap in a file of their own, mode 0644 and
    all: a file owned by an account other than the one running pivault (or root) is refused."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another account needs root")
    path = tmp_path / "policy.toml"
    path.write_text(Policy.default_text(), encoding="utf-8")
    path.chmod(0o644)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(PolicyError) as exc:
        Policy.load(path)
    assert exc.value.code == "policy.owner" and "65534" in exc.value.message
    os.chown(path, 0, 0)
    assert Policy.load(path).roles.keys() == Policy.default().roles.keys()


def test_explain_has_a_row_per_role() -> None:
    rows = {r["role"]: r for r in Policy.default().explain()}
    assert rows["admin"]["sees"] == "no PI"
    assert "lookup" in rows["officer"]["operations"]
    assert "masked" in rows["officer"]["sees"]
    assert "notes" not in rows["officer"]["sees"]
