"""HMAC-SHA256 on hashlib: the same bytes as the standard library's ``hmac``."""

from __future__ import annotations

import hmac
import threading

from hypothesis import given
from hypothesis import strategies as st

from pivault.crypto.hmac256 import HmacSha256, hmac_sha256


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_one_shot_matches_hmac(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


@given(st.binary(max_size=200), st.binary(max_size=40), st.lists(st.binary(max_size=100), max_size=5))
def test_prepared_key_matches_hmac(key: bytes, prefix: bytes, messages: list[bytes]) -> None:
    mac = HmacSha256(key, prefix)
    for message in messages:  # each call starts from the prepared states, not the last message
        assert mac.digest(message) == hmac.digest(key, prefix + message, "sha256")


def test_block_sized_and_longer_keys() -> None:
    for n in (63, 64, 65, 128):
        key = bytes(range(n))
        assert hmac_sha256(key, b"m") == hmac.digest(key, b"m", "sha256")
        assert HmacSha256(key, b"p").digest(b"m") == hmac.digest(key, b"pm", "sha256")


def test_prepared_key_shared_by_threads() -> None:
    mac = HmacSha256(b"k" * 32, b"domain\x00")
    wrong: list[int] = []

    def work(t: int) -> None:
        for i in range(2000):
            msg = f"{t}-{i}".encode()
            if mac.digest(msg) != hmac.digest(b"k" * 32, b"domain\x00" + msg, "sha256"):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []
