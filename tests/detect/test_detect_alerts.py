"""Alert sinks: table, JSON lines, signed webhook with retries; de-duplication."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from detect_helpers import Receiver

from pivault.detect import (
    Alert,
    AlertDispatcher,
    JsonlSink,
    MemoryCounters,
    TableSink,
    WebhookSink,
    ack_alert,
    list_alerts,
    sign_body,
)
from pivault.errors import NotFoundError, PivaultError
from pivault.store import Database

SECRET = b"synthetic-webhook-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET)
    yield r
    r.close()


def _alert(rule: str = "budget.exceeded", severity: str = "warning") -> Alert:
    return Alert(rule, severity, "officer-17", "aaaaaaaaaaaaaaaa",
                 {"budget_rule": "principal.records_per_minute", "limit": 30, "record_ids": ["r_1"]})


def test_alert_refuses_non_evidence() -> None:
    with pytest.raises(PivaultError):
        Alert("x.y", "warning", None, None, {"Name": "x"})
    with pytest.raises(PivaultError):
        Alert("x.y", "loud", None, None, {})
    with pytest.raises(PivaultError):
        Alert("x.y", "info", None, None, {"blob": b"\x00"})


def test_table_sink_list_and_ack(db: Database) -> None:
    a, b = _alert(), _alert("canary.read", "critical")
    sink = TableSink(db)
    sink.emit(a)
    sink.emit(b)
    got = list_alerts(db)
    assert {x["alert_id"] for x in got} == {a.alert_id, b.alert_id}
    assert list_alerts(db, severity="critical")[0]["evidence"]["record_ids"] == ["r_1"]
    ack_alert(db, a.alert_id, by="dpo-1", note="checked with the officer")
    assert [x["alert_id"] for x in list_alerts(db, unacked=True)] == [b.alert_id]
    with pytest.raises(NotFoundError):
        ack_alert(db, a.alert_id, by="dpo-1")


def test_jsonl_sink(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = JsonlSink(path)
    sink.emit(_alert())
    sink.emit(_alert("canary.read", "critical"))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["rule"] for x in lines] == ["budget.exceeded", "canary.read"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_webhook_signed_and_fast(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, SECRET)
    t0 = time.time()
    sink.emit(_alert())
    got = receiver.wait_for("budget.exceeded", timeout=2)
    assert got is not None
    assert got[0] - t0 < 1.0
    assert got[1]["principal"] == "officer-17" and receiver.bad_signatures == 0
    assert sink.flush(2) and sink.delivered == 1
    sink.close()


def test_webhook_retries_with_backoff() -> None:
    r = Receiver(SECRET, fail_first=2)
    try:
        sink = WebhookSink(r.url, SECRET, backoff=0.05)
        sink.emit(_alert())
        assert r.wait_for("budget.exceeded", timeout=5) is not None
        assert r.posts == 3
        assert sink.flush(2) and sink.failed == 0
        sink.close()
    finally:
        r.close()


def test_webhook_gives_up_on_a_dead_receiver() -> None:
    sink = WebhookSink("http://127.0.0.1:1/hook", SECRET, attempts=3, backoff=0.01, timeout=0.5)
    sink.emit(_alert())
    assert sink.flush(5)
    assert (sink.delivered, sink.failed) == (0, 1)


def test_wrong_secret_is_detectable(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, b"another-secret", attempts=1)
    sink.emit(_alert())
    assert sink.flush(3)
    assert receiver.bad_signatures == 1 and not receiver.received


def test_signature_format() -> None:
    assert sign_body(b"k", b"{}").startswith("sha256=") and len(sign_body(b"k", b"{}")) == 71


def test_dispatcher_deduplicates_but_never_critical(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    counters = MemoryCounters()
    d = AlertDispatcher([JsonlSink(path)], claim=counters.claim, repeat_seconds=60)
    assert d.raise_alert(_alert())
    assert not d.raise_alert(_alert())
    assert d.raise_alert(_alert("canary.read", "critical"))
    assert d.raise_alert(_alert("canary.read", "critical"))
    assert len(path.read_text().splitlines()) == 3


def test_a_broken_sink_does_not_stop_the_others(tmp_path: Path) -> None:
    class Broken:
        def emit(self, alert: Alert) -> None:
            raise RuntimeError("down")

    path = tmp_path / "a.jsonl"
    AlertDispatcher([Broken(), JsonlSink(path)]).raise_alert(_alert())
    assert path.read_text().count("\n") == 1


@pytest.mark.parametrize("answer", [None, 302, 404])
def test_an_undelivered_alert_leaves_a_trace_in_the_alerts_table(db: Database, tmp_path: Path,
                                                                 answer: int | None) -> None:
    """A webhook that is down, redirects or refuses must not lose the alert silently: the operator
    who reads the alerts table (or the JSON lines) learns that the webhook never got it."""
    from pivault.detect.alerts import sinks_from_config

    r = Receiver(SECRET, answer=answer) if answer is not None else None
    url = r.url if r is not None else "http://127.0.0.1:1/hook"
    try:
        sinks = sinks_from_config(db, jsonl=str(tmp_path / "a.jsonl"), webhook_url=url,
                                  webhook_secret=SECRET, log_sink=False)
        hook = next(s for s in sinks if isinstance(s, WebhookSink))
        hook.attempts, hook.backoff, hook.timeout = 2, 0.01, 0.5
        a = _alert("canary.read", "critical")
        AlertDispatcher(sinks).raise_alert(a)
        assert hook.flush(5)
        assert (hook.delivered, hook.failed) == (0, 1)
        traces = list_alerts(db, rule="alert.undelivered")
        assert len(traces) == 1
        ev = traces[0]["evidence"]
        assert ev["alert_id"] == a.alert_id and ev["alert_rule"] == "canary.read"
        assert traces[0]["severity"] == "critical"
        assert SECRET.decode() not in json.dumps(traces[0])
        lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
        assert [x["rule"] for x in lines] == ["canary.read", "alert.undelivered"]
        if r is not None:
            assert r.posts == (1 if answer in (302, 404) else 2)  # a refusal is final, not retried
        hook.close()
    finally:
        if r is not None:
            r.close()


def test_a_hanging_receiver_does_not_grow_the_queue_without_bound() -> None:
    """Critical alerts are never suppressed: a flood of them (refusals at the vault-wide limit)
    against a receiver that accepts and never answers must keep the sender's memory bounded, and
    every alert it cannot hold is handed on as undelivered rather than lost without a word."""
    import socket
    import threading

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # accepts connections, never reads or answers
    undelivered: list[tuple[str, str]] = []
    lock = threading.Lock()

    def gave_up(alert: Alert, reason: str) -> None:
        with lock:
            undelivered.append((alert.alert_id, reason))

    try:
        hook = WebhookSink(f"http://127.0.0.1:{hang.getsockname()[1]}/hook", SECRET, attempts=1,
                           timeout=0.3, max_queue=5, on_give_up=gave_up)
        hook.start()
        d = AlertDispatcher([hook])
        t0 = time.monotonic()
        raised = [_alert("budget.vault", "critical") for _ in range(40)]
        for a in raised:
            d.raise_alert(a)
        assert time.monotonic() - t0 < 1.0  # the requests raising them never wait
        assert hook._pending <= 5
        assert hook.flush(10)
        assert sorted(i for i, _ in undelivered) == sorted(a.alert_id for a in raised)
        assert sum(1 for _, r in undelivered if r == "queue full") >= 30
        assert (hook.delivered, hook.failed) == (0, 40)
        hook.close()
    finally:
        hang.close()
