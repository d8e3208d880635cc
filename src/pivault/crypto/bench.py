"""Per-call cost of the keyring against bare Tink, measured in one run.

``python -m pivault.crypto.bench [--number N]`` prints microseconds per call
(best of five) and the ratio of each keyring operation to the bare Tink call
it wraps. Data is synthetic; the keyring lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import tink
from tink import aead, prf

from pivault.crypto.keyring import Keyring, field_ad
from pivault.crypto.providers import Argon2Params, PassphraseProvider

# A record shaped like the vault's: five PI fields of typical sizes.
_RECORD = {
    "name": "甲乙丙".encode(),
    "id_number": b"11010119900307891X",
    "mobile": b"13800000000",
    "address": "某省某市某区某街道某路100号".encode(),
    "notes": b"synthetic note " * 4,
}


def _best(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def run(number: int = 20000) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        provider = PassphraseProvider("bench-synthetic", Argon2Params(time_cost=1, memory_cost=8))
        ring = Keyring.create(Path(tmp) / "keyring.json", provider, expected_population=10**7)
        pt = _RECORD["id_number"]
        ad = field_ad("r00000001", "id_number")

        for template in ("XCHACHA20_POLY1305", "AES256_GCM", "AES256_GCM_SIV"):
            handle = tink.new_keyset_handle(getattr(aead.aead_key_templates, template))
            primitive = handle.primitive(aead.Aead)
            ct = primitive.encrypt(pt, ad)
            rows.append((f"tink {template} encrypt", _best(partial(primitive.encrypt, pt, ad), number), ""))
            rows.append((f"tink {template} decrypt", _best(partial(primitive.decrypt, ct, ad), number), ""))
        base_enc = rows[0][1]
        base_dec = rows[1][1]

        enc = _best(lambda: ring.encrypt("r00000001", "id_number", pt), number)
        rows.append(("keyring.encrypt", enc, f"{enc / base_enc:.2f}x tink"))
        ct = ring.encrypt("r00000001", "id_number", pt)
        dec = _best(lambda: ring.decrypt("r00000001", "id_number", ct), number)
        rows.append(("keyring.decrypt", dec, f"{dec / base_dec:.2f}x tink"))

        many = _best(lambda: ring.encrypt_many("r00000001", _RECORD), number // 5)
        rows.append(
            ("keyring.encrypt_many (5 fields), per field", many / 5, f"{many / 5 / base_enc:.2f}x tink")
        )
        cts = ring.encrypt_many("r00000001", _RECORD)
        dmany = _best(lambda: ring.decrypt_many("r00000001", cts), number // 5)
        rows.append(
            ("keyring.decrypt_many (5 fields), per field", dmany / 5, f"{dmany / 5 / base_dec:.2f}x tink")
        )

        prf_primary = (
            tink.new_keyset_handle(prf.prf_key_templates.HMAC_SHA256).primitive(prf.PrfSet).primary()
        )
        base_prf = _best(lambda: prf_primary.compute(pt, 3), number)
        rows.append(("tink HMAC_SHA256 PRF compute", base_prf, ""))
        bi = _best(lambda: ring.blind_index("id_number", "11010119900307891X"), number)
        rows.append(("keyring.blind_index", bi, f"{bi / base_prf:.2f}x tink"))

        start = time.perf_counter()
        PassphraseProvider("bench-synthetic").wrap(b"", b"")
        argon = (time.perf_counter() - start) * 1e6
        rows.append(("Argon2id t=3 m=64MiB p=1 (once per open)", argon, ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    args = parser.parse_args()
    for name, micros, ratio in run(args.number):
        print(f"{name:48s} {micros:12.2f} us  {ratio}")


if __name__ == "__main__":
    main()
