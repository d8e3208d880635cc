"""A dump whose values were re-typed (full-width digits, other scripts' digits, invisible
characters, spaces between characters) is matched as the same dump typed plainly.

Whoever leaks a copy of an export can pass it through a tool that re-types
what it holds. Read with the vault's own normalisers, each re-typed value is
the value the vault holds, and the check finds the same residents and the
same export as in the copy itself.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leak.conftest import World, build_vault, ctx
from pivault.leak import exports as ex
from pivault.leak.check import check
from pivault.leak.columns import classify, shown_header, shown_name
from pivault.model import resident_id

_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PER_EXPORT = 400


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("retyped")
    w = build_vault(tmp, f"sqlite:///{tmp / 'vault.db'}", count=2000, seed=47)
    yield w
    w.vault.close()


def _export(w: World, fields: list[str], start: int, tag: str) -> tuple[str, Path]:
    v = w.vault
    sel = tuple(r.record_id for r in w.residents[start:start + PER_EXPORT])
    req = ex.request(v, ex.Selection(record_ids=sel), recipient=f"recipient {tag}", purpose="research",
                     fields=fields, ctx=ctx(f"req-{tag}"))
    ex.approve(v, req.export_id, ctx=ctx("approver-1", "approver"))
    out = w.tmp / f"{tag}.csv"
    ex.fetch(v, req.export_id, out, ctx=ctx(f"req-{tag}"))
    return req.export_id, out


def _retyped(path: Path, out: Path, retype: dict[str, Callable[[str], str]]) -> Path:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows[1:]:
            w.writerow([retype[h](c) if h in retype and c else c for h, c in zip(header, row, strict=True)])
    return out


def _spaced(address: str) -> str:
    """Full-width digits, and an ideographic space after the first character (the vault removes
    spaces between Chinese characters)."""
    return address[:1] + "\u3000" + address[1:].translate(_FULL_WIDTH)


def _assert_same_outcome(w: World, export_id: str, plain: Path, retyped: Path) -> None:
    first = check(w.vault, [plain], ctx=ctx("dpo-1", "dpo"), save=False)
    second = check(w.vault, [retyped], ctx=ctx("dpo-1", "dpo"), save=False)
    assert first.residents_matched >= 0.9 * PER_EXPORT
    assert second.residents_matched == first.residents_matched
    assert second.export_canaries[export_id]["found"] == first.export_canaries[export_id]["found"] > 0
    assert second.attribution is not None
    assert [(f.kind, f.source_id, f.strength) for f in second.attribution.named] == [
        ("export", export_id, "conclusive")]


def test_an_export_of_names_and_addresses_with_the_addresses_retyped(world: World, tmp_path: Path) -> None:
    """The check read a dump's addresses as written, only stripped: an address re-typed with
    full-width digits or a space between its characters agreed with no exported row and no
    canary, and a copy of an export of names and addresses matched nobody and named no export."""
    export_id, path = _export(world, ["name", "address"], 0, "addr")
    retyped = _retyped(path, tmp_path / "retyped.csv", {"address": _spaced})
    _assert_same_outcome(world, export_id, path, retyped)


def test_an_export_with_numbers_and_names_retyped(world: World, tmp_path: Path) -> None:
    """ID numbers in Arabic-Indic digits, mobiles with a zero-width space and bidi controls, names
    with a zero-width space: each was refused by the validators the check reads a dump with."""
    export_id, path = _export(world, ["name", "id_number", "mobile"], PER_EXPORT, "num")
    retyped = _retyped(path, tmp_path / "retyped.csv", {
        "id_number": lambda v: v.translate(_ARABIC),
        "mobile": lambda v: "\u202d" + v[:3] + "\u200b" + v[3:] + "\u202c",
        "name": lambda v: v[:1] + "\u200b" + v[1:],
    })
    _assert_same_outcome(world, export_id, path, retyped)


def _circled(n: int) -> str:
    """The one character that writes ``n`` (10 to 50) in a circle: ``⑩`` … ``㊿``."""
    return chr(0x2460 + n - 1) if n <= 20 else chr(0x3251 + n - 21) if n <= 35 else chr(0x32B1 + n - 36)


def test_a_number_written_in_circled_numbers_is_masked_as_the_number() -> None:
    """A header cell or a member name that reads as a value is masked as that value, keeping its
    first three and last four characters. Written in circled numbers (``⑪`` is 11), three
    characters were four digits and four were eight: the case showed the birth day, sequence
    and check character of an ID number, and more of a mobile than its mask shows."""
    idn = next(v for seq in range(1000)
               if all(10 <= int((v := resident_id.make("110101", dt.date(1990, 12, 25), seq))[i:i + 2]) <= 50
                      for i in (14, 16)))
    written = _circled(11) + idn[2:10] + "".join(_circled(int(idn[i:i + 2])) for i in (10, 12, 14, 16))
    assert classify(written) == "id_number"
    want = idn[:3] + "*" * 11 + idn[-4:]
    assert shown_header(written) == want
    assert shown_name(f"exports/{written}.csv") == f"exports/{want}.csv"
