"""One resident, however their numbers and name are typed: put, update, import and find agree.

A value re-typed so that it reads the same (a lower-case ``x``, full-width or
Arabic-Indic digits, a zero-width space, a bidi control, an en dash) must
either be refused with a clear code or land on the resident's one record: a
form that is stored apart makes a second record for a resident the vault
holds, out of reach of the lookups and of the leak check.
"""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

import pytest
from vault_support import make_residents

from pivault.errors import ValidationError
from pivault.model import Resident, new_record_id, resident_id
from pivault.policy import AccessContext
from pivault.vault import DuplicateRecord, Vault

_ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
_DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")


def _number_forms(v: str) -> dict[str, str]:
    """The forms of a number (ID or mobile) a person reads as ``v``."""
    return {
        "arabic-indic": v.translate(_ARABIC),
        "devanagari": v.translate(_DEVANAGARI),
        "zero-width space": v[:6] + "\u200b" + v[6:],
        "byte-order mark": "\ufeff" + v,
        "bidi controls": "\u202d" + v + "\u202c",
        "zero-width joiner": v[:3] + "\u200d" + v[3:],
        "en dash": v[:3] + "\u2013" + v[3:7] + "\u2013" + v[7:],
    }


def _with_x() -> str:
    """A synthetic ID number whose check character is X."""
    for seq in range(1000):
        idn = resident_id.make("110101", _dt.date(1990, 3, 7), seq)
        if idn.endswith("X"):
            return idn
    raise AssertionError("no sequence gives the check character X")


def test_a_resident_built_by_hand_is_normalised_before_it_is_stored(
        vault: Vault, ctx: AccessContext, reveal: AccessContext) -> None:
    """``Vault.put(Resident(...))`` took the fields as written: ``…X`` typed ``…x`` or in full width
    was sealed under index values of its own - a second record for the resident, found by no lookup."""
    r = make_residents(1, seed=31)[0]
    idn = _with_x()
    rid = vault.put({**r, "id_number": idn}, ctx=ctx)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in idn.lower())
    for typed in (idn.lower(), fullwidth, " " + idn + " "):
        by_hand = Resident(record_id=new_record_id(), name=r["name"], id_number=typed)
        with pytest.raises(DuplicateRecord) as info:
            vault.put(by_hand, ctx=ctx)
        assert info.value.existing_record_id == rid
    assert vault.store.count() == 1
    # one built by hand for a new resident is stored in the normalised form, and found by it
    other = resident_id.make("110101", _dt.date(1985, 1, 2), 17)
    rid2 = vault.put(Resident(record_id=new_record_id(), name=" 李\u3000四 ", id_number=other.lower(),
                              mobile="+86 139-1234-5678"), ctx=ctx)
    got = vault.get(rid2, ctx=reveal)
    assert (got["name"], got["id_number"], got["mobile"]) == ("李四", other, "13912345678")
    assert [x["record_id"] for x in vault.find(id_number=other, ctx=ctx)] == [rid2]
    assert [x["record_id"] for x in vault.find(mobile="13912345678", ctx=ctx)] == [rid2]
    with pytest.raises(ValidationError) as bad:
        vault.put(Resident(record_id=new_record_id(), name="李四", id_number=other[:17] + "0"), ctx=ctx)
    assert bad.value.code in ("id.checksum", "id.format")


def test_numbers_retyped_are_the_same_resident_everywhere(
        vault: Vault, ctx: AccessContext, reveal: AccessContext, tmp_path: Path) -> None:
    """Digits of other scripts and invisible characters were refused by put and find alike, and by
    the leak check, which reads a dump with the same validators: a dump re-typed so was not matched.
    Folded, each form is the resident's one record for put, update, import and find."""
    a, b = make_residents(2, seed=32)
    rid_a = vault.put(a, ctx=ctx)
    rid_b = vault.put(b, ctx=ctx)
    id_forms = _number_forms(a["id_number"])
    mobile_forms = _number_forms(a["mobile"])
    for label, typed in id_forms.items():
        with pytest.raises(DuplicateRecord):
            vault.put({**b, "id_number": typed}, ctx=ctx)
        with pytest.raises(DuplicateRecord):
            vault.update(rid_b, {"id_number": typed}, ctx=ctx)
        found = vault.find(id_number=typed, ctx=ctx)
        assert [x["record_id"] for x in found] == [rid_a], label
    for label, typed in mobile_forms.items():
        assert [x["record_id"] for x in vault.find(mobile=typed, ctx=ctx)] == [rid_a], label
    born = a["id_number"][6:10] + "-" + a["id_number"][10:12] + "-" + a["id_number"][12:14]
    for typed in (a["name"][0] + "\u200b" + a["name"][1:], "\u2067" + a["name"] + "\u2069",
                  a["name"][0] + "\ufe00" + a["name"][1:]):
        assert [x["record_id"] for x in vault.find(name=typed, birth_date=born, ctx=ctx)] == [rid_a]
    # an update to a re-typed mobile stores the mobile itself
    vault.update(rid_b, {"mobile": mobile_forms["arabic-indic"]}, ctx=ctx)
    assert vault.get(rid_b, ctx=reveal)["mobile"] == a["mobile"]
    # an import of the same resident, re-typed, is a duplicate, not a second record
    src = tmp_path / "retyped.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "id_number", "mobile"])
        for typed in id_forms.values():
            w.writerow([a["name"], typed, a["mobile"]])
    summary = vault.import_files([src], on_duplicate="reject")
    assert summary.files[0].reject_codes == {"duplicate": len(id_forms)}
    assert vault.store.count() == 2


def test_nothing_but_invisible_characters_is_an_empty_value(vault: Vault, ctx: AccessContext) -> None:
    r = make_residents(1, seed=33)[0]
    for field, code in (("name", "name.empty"), ("id_number", "id.empty"), ("mobile", "mobile.empty")):
        with pytest.raises(ValidationError) as info:
            vault.put({**r, field: "\u200b\ufeff"}, ctx=ctx)
        assert info.value.code == code
    assert vault.store.count() == 0


def test_latin_lookalikes_are_not_letters_of_a_name(vault: Vault, ctx: AccessContext) -> None:
    """``Wang ǀi`` (a click letter for ``l``) and ``Zhang ×an`` were stored as names that read like
    ``Wang li`` and ``Zhang xan`` and that no lookup by those finds; they are refused, by put and find."""
    r = make_residents(1, seed=34)[0]
    born = r["id_number"][6:10] + "-" + r["id_number"][10:12] + "-" + r["id_number"][12:14]
    for typed in ("Wang \u01c0i", "Wang L\u01c3", "Zhang \u00d7an", "Li \u00f7ing"):
        with pytest.raises(ValidationError) as info:
            vault.put({**r, "name": typed}, ctx=ctx)
        assert info.value.code == "name.chars"
        with pytest.raises(ValidationError):
            vault.find(name=typed, birth_date=born, ctx=ctx)
    vault.put({**r, "name": "Zhang Søren-Ørsted"}, ctx=ctx)  # Latin-1 letters stay names
    assert vault.store.count() == 1


def test_a_birth_date_is_read_in_the_forms_the_leak_check_reads(vault: Vault, ctx: AccessContext) -> None:
    """A lookup by name and birth date took ``YYYY-MM-DD`` only (and what ``date.fromisoformat``
    happens to read): ``1990/3/7`` or ``1990年3月7日``, which the leak check reads in a dump's
    birth-date column, were refused as ``birth_date.format``."""
    r = make_residents(1, seed=35)[0]
    rid = vault.put(r, ctx=ctx)
    y, m, d = r["id_number"][6:10], int(r["id_number"][10:12]), int(r["id_number"][12:14])
    fullwidth = str.maketrans("0123456789", "０１２３４５６７８９")
    for written in (f"{y}-{m:02d}-{d:02d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{y}{m:02d}{d:02d}",
                    f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}".translate(fullwidth),
                    f"{y}-{m:02d}-{d:02d}".translate(_ARABIC), f" {y}-{m}-{d} 00:00:00 "):
        found = vault.find(name=r["name"], birth_date=written, ctx=ctx)
        assert [x["record_id"] for x in found] == [rid], written
    for bad in (f"{y}-02-30", f"{y}/13/1", "1990-3", "yesterday"):
        with pytest.raises(ValidationError) as info:
            vault.find(name=r["name"], birth_date=bad, ctx=ctx)
        assert info.value.code == "birth_date.format"
