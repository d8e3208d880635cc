"""No plaintext on disk: encrypt synthetic names, ID numbers and mobiles, then
search every file written for every plaintext, in UTF-8 and GB18030."""

from __future__ import annotations

import random
from pathlib import Path

from pivault.crypto import Keyring, PassphraseProvider

COUNT = 2000


def _synthetic_rows(rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for _ in range(COUNT):
        # 3-4 random characters from the common CJK block: made-up names
        name = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(3, 4)))
        id_number = "".join(rng.choice("0123456789") for _ in range(18))
        mobile = "1" + "".join(rng.choice("0123456789") for _ in range(10))
        rows.append({"name": name, "id_number": id_number, "mobile": mobile})
    return rows


def test_no_plaintext_in_any_file(tmp_path: Path, provider: PassphraseProvider) -> None:
    rng = random.Random(20240607)
    rows = _synthetic_rows(rng)
    ring = Keyring.create(tmp_path / "keys" / "keyring.json", provider, expected_population=10**7)
    out = tmp_path / "data" / "ciphertexts.bin"
    out.parent.mkdir()
    with out.open("wb") as fh:
        for i, row in enumerate(rows):
            record_id = f"r{i:08d}"
            cts = ring.encrypt_many(record_id, {k: v.encode("utf-8") for k, v in row.items()})
            for field in ("name", "id_number", "mobile"):
                fh.write(cts[field])
            fh.write(ring.blind_index("id_number", row["id_number"]))
            fh.write(ring.blind_index("mobile", row["mobile"]))
            fh.write(ring.blind_index("name_birth", row["name"] + "|" + row["id_number"][6:14]))
            fh.write(b"\n")
            if i % 100 == 0:
                assert ring.decrypt_many(record_id, cts) == {k: v.encode() for k, v in row.items()}

    needles: set[bytes] = set()
    for row in rows:
        for value in row.values():
            needles.add(value.encode("utf-8"))
            needles.add(value.encode("gb18030"))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"keyring.json", "ciphertexts.bin"}
    for path in files:
        blob = path.read_bytes()
        leaked = [n for n in needles if n in blob]
        assert not leaked, f"{len(leaked)} plaintexts found in {path.name}"
