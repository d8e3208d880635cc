"""An IPv6 client's share of a worker is its /64's: one host may draw a new address per connection.

Counted per exact address, a single IPv6 host (SLAAC and privacy addresses give it a whole /64)
could hold any number of connections in their TLS handshake and start handshakes at any rate.
The admission's own counts, driven with the addresses a socket would report.
"""

from __future__ import annotations

import logging

import pytest

from pivault.api.admission import Admission, AdmissionLimits, client_key, network_of


def _admission(per_client: int, rate: float) -> Admission:
    return Admission(AdmissionLimits(per_client=per_client, rate=rate), clock=lambda: 1000.0)


def test_addresses_of_one_ipv6_64_share_one_connection_share(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gate = _admission(per_client=3, rate=1000)
    host = [f"2001:db8:7:9:{i:x}:{i:x}:1:1" for i in range(1, 5)]
    assert [gate.admit(h) for h in host[:3]] == [None, None, None]
    assert gate.admit(host[3]) == "connection.limit"  # a fourth source address of the same /64
    assert gate.admit("2001:db8:7:a::1") is None  # the next /64 is another client
    gate.release(host[0])
    assert gate.admit(host[3]) is None  # a connection of the /64 closed: room for one more
    assert gate.admit("192.0.2.7") is None and gate.admit("192.0.2.8") is None  # IPv4: per address
    # the refusal is logged under the /48, never an address
    assert "2001:db8:7::/48" in caplog.text and "2001:db8:7:9:4:4:1:1" not in caplog.text


def test_addresses_of_one_ipv6_64_share_one_handshake_rate() -> None:
    gate = _admission(per_client=10_000, rate=5)
    answers = [gate.admit(f"2001:db8:7:9::{i:x}") for i in range(1, 41)]
    assert answers.count(None) <= 6 and "handshake.rate" in answers  # the clock stands still
    assert gate.admit("2001:db8:7:10::1") is None


def test_a_dual_stack_ipv4_client_counts_as_its_ipv4_address() -> None:
    gate = _admission(per_client=1, rate=1000)
    assert gate.admit("::ffff:198.51.100.4") is None
    assert gate.admit("198.51.100.4") == "connection.limit"
    assert client_key("::ffff:198.51.100.4") == "198.51.100.4"


def test_the_log_names_a_64_by_its_48() -> None:
    key = client_key("2001:db8:7:9:aaaa:bbbb:cccc:dddd")
    assert key == "2001:db8:7:9::/64"
    assert network_of(key) == "2001:db8:7::/48" and network_of("203.0.113.9") == "203.0.113.0/24"
