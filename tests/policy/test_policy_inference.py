"""A policy whose role could rebuild a resident ID number from the fields beside its mask is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pivault.cli.main import app
from pivault.policy import Policy, PolicyError
from pivault.policy.inference import THRESHOLD, count_candidates

HEADER = '[policy]\nversion = 1\n'


def role(name: str, *, operations: str = '["read"]', purposes: str = '["p1"]', fields: str,
         reveal: str = "") -> str:
    text = (f'[roles.{name}]\noperations = {operations}\npurposes = {purposes}\n'
            f'[roles.{name}.fields]\n{fields}\n')
    if reveal:
        text += f'[roles.{name}.reveal]\n{reveal}\n'
    return text


def refusal(text: str) -> str:
    with pytest.raises(PolicyError) as exc:
        Policy.loads(HEADER + text)
    assert exc.value.code == "policy.id_rebuild"
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_region_and_birth_date_in_full_beside_a_masked_id_are_refused() -> None:
    msg = refusal(role("clerk", fields='id_number = "mask"\nregion_code = "none"\nbirth_date = "none"'))
    assert msg.startswith("roles.clerk, purpose 'p1': ")
    for part in ("id_number", "region_code", "birth_date", "1 candidate", "region_province",
                 "id_number_ends", "reveal"):
        assert part in msg, part


def test_the_old_shipped_masks_are_refused_naming_the_role() -> None:
    old = Policy.default_text().replace('id_number = "id_number_ends"', 'id_number = "mask"').replace(
        'region_code = "region_province"', 'region_code = "none"')
    with pytest.raises(PolicyError, match=r"^roles\.officer, purpose 'identity_verification': "):
        Policy.loads(old)
    # the registrar alone: the region code and birth date in full and the last four, under registration
    registrar_only = Policy.default_text().replace(
        '[roles.registrar.fields]\nname = "mask"\nid_number = "id_number_ends"',
        '[roles.registrar.fields]\nname = "mask"\nid_number = "mask"').replace(
        'notes = "full"\ngender = "none"\nbirth_date = "none"\nregion_code = "region_province"',
        'notes = "full"\ngender = "none"\nbirth_date = "none"\nregion_code = "none"')
    with pytest.raises(PolicyError, match=r"^roles\.registrar, purpose 'registration': .*1 candidate left"):
        Policy.loads(registrar_only)


def test_the_year_and_the_county_leave_too_few() -> None:
    # no lookup: the birth date is the mask's year; the visible check character leaves 365 / 11, rounded up
    msg = refusal(role("clerk", fields='id_number = "mask"\nregion_code = "none"\nbirth_date = "mask"'))
    assert "34 candidates left" in msg and "birth_date" in msg


def test_a_lookup_supplies_the_birth_date_whatever_its_mask() -> None:
    # the birth date is not even shown, but a lookup by name and birth date tells it
    msg = refusal(role("clerk", operations='["lookup"]', fields='id_number = "mask"\nregion_code = "none"'))
    assert "birth_date (from lookups by name and birth date)" in msg
    # the default ID mask's first three and last four with a known birth date: three region digits left
    msg = refusal(role("clerk", operations='["lookup"]', fields='id_number = "mask"'))
    assert "positions 1-18" not in msg and "positions 1-3, 7-18 of 18 known" in msg


def test_the_shipped_policy_passes_with_room() -> None:
    p = Policy.default()
    seen = {(e.role, e.purpose): e.candidates for e in p.id_exposures()}
    # every purpose of a role that reads records without a reveal of id_number is counted
    assert set(seen) >= {("officer", "identity_verification"), ("registrar", "registration"),
                         ("dpo", "audit")}
    # the purposes that reveal the address reveal the number too
    for purpose in (("officer", "case_investigation"), ("registrar", "correction"),
                    ("dpo", "data_subject_request")):
        assert purpose not in seen
    assert min(seen.values()) >= THRESHOLD
    assert seen[("officer", "identity_verification")] == 1455  # the figure the policy file quotes
    assert "1455" in Policy.default_text()


def test_a_role_that_may_reveal_the_number_is_not_refused_for_that_purpose() -> None:
    fields = 'id_number = "mask"\nregion_code = "none"\nbirth_date = "none"'
    ok = Policy.loads(HEADER + role("clerk", purposes='["p1"]', fields=fields, reveal='id_number = ["p1"]'))
    assert [e.purpose for e in ok.id_exposures()] == []
    # the same role with a second purpose, for which it may not reveal the number, is refused for that one
    msg = refusal(role("clerk", purposes='["p1", "p2"]', fields=fields, reveal='id_number = ["p1"]'))
    assert msg.startswith("roles.clerk, purpose 'p2': ")


def test_a_field_revealed_for_the_purpose_counts_in_full() -> None:
    # the region code is masked to its province, but revealed in full for p1, beside the masked number
    fields = 'id_number = "mask"\nregion_code = "region_province"\nbirth_date = "none"'
    msg = refusal(role("clerk", purposes='["p1"]', fields=fields, reveal='region_code = ["p1"]'))
    assert msg.startswith("roles.clerk, purpose 'p1': ")
    # without the reveal, the province and the number's ends leave 32 counties x 1000 sequences / 11
    ends = fields.replace('"mask"', '"id_number_ends"')
    Policy.loads(HEADER + role("clerk", purposes='["p1"]', fields=ends))
    msg = refusal(role("clerk", purposes='["p1"]', fields=ends, reveal='region_code = ["p1"]'))
    assert "1000 candidates" not in msg and "(region_province)" in msg


def test_the_check_character_recovers_one_missing_digit() -> None:
    everything = set(range(18))
    for hidden in range(17):
        assert count_candidates(everything - {hidden}, gender=False) == 1
    # two hidden digits: 100 numbers, one in eleven of them has the visible check character
    assert count_candidates(everything - {15, 16}, gender=False) == 10
    # without the check character it is computed from the rest, and rules out nothing
    assert count_candidates(everything - {15, 16, 17}, gender=False) == 100
    assert count_candidates(everything - {15, 16, 17}, gender=True) == 50


def test_roles_without_records_are_not_counted() -> None:
    p = Policy.loads(HEADER + '[roles.admin]\noperations = ["admin"]\npurposes = ["administration"]\n')
    assert p.id_exposures() == []


def test_policy_check_prints_the_refusal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(HEADER + role("clerk", fields='id_number = "mask"\nregion_code = "none"\n'
                                                 'birth_date = "none"'), encoding="utf-8")
    r = CliRunner().invoke(app, ["policy", "check", str(bad)])
    assert r.exit_code == 2
    assert "roles.clerk, purpose 'p1'" in r.stderr and "region_province" in r.stderr
    r = CliRunner().invoke(app, ["policy", "check"])
    assert r.exit_code == 0, r.output
    assert "ID numbers, registrar for registration: " in r.stdout and "1,455 candidates" in r.stdout


def test_an_address_down_to_its_district_is_counted() -> None:
    """For a resident registered where they live, the district is the number's county: with the
    birth date a lookup gives, the sex and the last character, a few dozen numbers are left."""
    fields = ('id_number = "id_number_ends"\nregion_code = "region_province"\ngender = "none"\n'
              'address = "mask"')
    msg = refusal(role("clerk", operations='["lookup"]', fields=fields))
    assert "address" in msg and "46 candidates" in msg and "address_province" in msg
    ok = Policy.loads(HEADER + role("clerk", operations='["lookup"]', fields=fields.replace(
        'address = "mask"', 'address = "address_province"')))
    assert [e.candidates for e in ok.id_exposures()] == [1455]
