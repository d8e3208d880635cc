"""One resident, however their numbers and name are typed: put, update, import and find agree.

A value re-typed so that it reads the same (a lower-case ``x``, full-width or
Arabic-Indic digits, a zero-width space, a bidi control, an en dash) must
either be refused with a clear code or land on the resident's one record: a
form that is stored apart makes a second record for a resident the vault
holds, out of reach of the lookups and of the leak check.
"""

from __future__ import annotations

import datetime as _dt

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
