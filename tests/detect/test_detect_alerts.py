"""Alert sinks: table, JSON lines, signed webhook with retries; de-duplication."""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from detect_helpers import FakeClock, Receiver

from pivault.detect import (
    Alert,
    AlertDispatcher,
    JsonlSink,
    MemoryCounters,
    TableSink,
    WebhookSignatureError,
    WebhookSink,
    ack_alert,
    list_alerts,
    sign_webhook,
    verify_webhook,
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
    """The header as docs/detect.md states it: the time and an HMAC over "<time>.<body>"."""
    import hashlib
    import hmac

    value = sign_webhook(b"k", b"{}", timestamp=1_900_000_000)
    want = hmac.new(b"k", b"1900000000.{}", hashlib.sha256).hexdigest()
    assert value == f"t=1900000000,v1={want}"
    # the test vector docs/detect.md gives receivers written in other languages
    doc = (Path(__file__).parents[2] / "docs" / "detect.md").read_text(encoding="utf-8")
    vector = sign_webhook(b"example-secret", b'{"alert_id":"al_0123456789abcdef"}', timestamp=1_900_000_000)
    assert f"X-Pivault-Signature: {vector}\n" in doc


def _delivery(receiver: Receiver, alert: Alert | None = None) -> tuple[dict[str, str], bytes]:
    """One alert sent through a real sink: the headers and raw body the receiver got."""
    sink = WebhookSink(receiver.url, SECRET)
    sink.emit(alert or _alert())
    assert sink.flush(10) and sink.delivered == 1
    sink.close()
    return receiver.deliveries[-1]


def test_verify_webhook_accepts_a_delivery_and_says_why_it_refuses_one(receiver: Receiver) -> None:
    a = _alert()
    headers, body = _delivery(receiver, a)
    assert headers["X-Pivault-Alert"] == a.alert_id  # what a receiver de-duplicates on
    signed = verify_webhook(SECRET, headers, body)
    assert abs(signed - time.time()) < 300
    value = headers["X-Pivault-Signature"]
    # the header's value alone, the headers under another case, the secret as text: all the same
    assert verify_webhook(SECRET, value, body) == signed
    assert verify_webhook(SECRET.decode(), {"x-pivault-signature": value}, body) == signed
    # within the tolerance either side of the receiver's clock
    assert verify_webhook(SECRET, value, body, now=signed + 300) == signed
    assert verify_webhook(SECRET, value, body, now=signed - 300) == signed

    def refused(code: str, secret: bytes, sig: dict[str, str] | str | None, data: bytes,
                **kw: float) -> None:
        with pytest.raises(WebhookSignatureError) as info:
            verify_webhook(secret, sig, data, **kw)
        assert info.value.code == code
        text = str(info.value)
        assert "\n" not in text and SECRET.decode() not in text and a.alert_id not in text

    refused("webhook.no_signature", SECRET, {"Content-Type": "application/json"}, body)
    refused("webhook.no_signature", SECRET, None, body)
    refused("webhook.malformed", SECRET, "sha256=" + "0" * 64, body)  # the form sent before times
    refused("webhook.malformed", SECRET, value.split(",")[1], body)   # no time
    refused("webhook.malformed", SECRET, value + ",v1=xyz", body)
    refused("webhook.bad_signature", b"another-secret", value, body)
    refused("webhook.bad_signature", SECRET, value, body.replace(b"officer-17", b"officer-18"))
    # a later time put on an old signature: the time is signed, so it no longer matches
    refused("webhook.bad_signature", SECRET, value.replace(f"t={signed}", f"t={signed + 3600}"), body)
    # a delivery captured and replayed later, or signed by a clock far ahead
    refused("webhook.stale", SECRET, value, body, now=signed + 301)
    refused("webhook.stale", SECRET, value, body, now=signed - 301)
    refused("webhook.stale", SECRET, value, body, now=signed + 61, tolerance=60)
    # a receiver whose secret is unset, or a window that is no window, is refused outright
    for secret, tolerance, code in ((b"", 300.0, "webhook.secret"), (SECRET, 0.0, "webhook.tolerance")):
        with pytest.raises(PivaultError) as bad:
            verify_webhook(secret, value, body, tolerance=tolerance)
        assert bad.value.code == code
    # a second v1 (a secret being rolled over) does not stop the right one from matching
    assert verify_webhook(SECRET, f"{value},v1={'0' * 64}", body) == signed


def test_a_replayed_delivery_is_refused_by_a_receiver_that_checks_the_time() -> None:
    """The replay the time closes: a delivery captured on the way and posted again, unchanged, an
    hour later. Its signature over the body still matches; its signed time is an hour old."""
    import httpx

    clock = FakeClock(time.time())
    r = Receiver(SECRET, clock=clock)
    try:
        headers, body = _delivery(r)
        clock.advance(3600)
        replayed = {"Content-Type": "application/json", "X-Pivault-Signature": headers["X-Pivault-Signature"]}
        again = httpx.post(r.url, content=body, headers=replayed)
        assert again.status_code == 401 and r.bad_signatures == 1 and len(r.received) == 1
    finally:
        r.close()


def test_each_retry_is_signed_with_its_own_time() -> None:
    """A retry after a long backoff must not carry the first attempt's time, or a receiver that
    refuses old times would refuse every late retry. Here each failure moves the clocks of both
    ends on by 1000 s (beyond the 300 s tolerance)."""
    clock = FakeClock(1_900_000_000.0)
    r = Receiver(SECRET, fail_first=2, clock=clock, on_fail=lambda: clock.advance(1000))
    try:
        sink = WebhookSink(r.url, SECRET, backoff=0.05, clock=clock)
        sink.emit(_alert())
        assert sink.flush(10)
        assert r.stamps == [1_900_000_000, 1_900_001_000, 1_900_002_000]
        assert (sink.delivered, sink.failed, r.bad_signatures, len(r.received)) == (1, 0, 0, 1)
        sink.close()
    finally:
        r.close()


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


def test_alerts_arrive_in_the_order_raised_while_the_receiver_fails() -> None:
    """A receiver that fails the first attempts must still get the alerts in the order they were
    raised: the first alert holds the ones after it until it is delivered (here on its third try),
    rather than being overtaken by them while it waits out its backoff."""
    r = Receiver(SECRET, fail_first=2)
    try:
        # a backoff far longer than raising three alerts takes, even on a loaded machine
        sink = WebhookSink(r.url, SECRET, backoff=0.5)
        raised = [_alert(rule) for rule in ("budget.exceeded", "token.suspended", "canary.read")]
        for a in raised:
            sink.emit(a)
        assert sink.flush(30)
        assert [alert["alert_id"] for _, alert in r.received] == [a.alert_id for a in raised]
        assert (r.posts, sink.delivered, sink.failed) == (5, 3, 0)  # three tries, then one each
        sink.close()
    finally:
        r.close()


def test_an_alert_given_up_lets_the_next_ones_go_in_order() -> None:
    """The first alert holds the others only until it is given up: then they go, in order, and the
    one given up is handed on as undelivered (the trace the operator reads in the alerts table)."""
    r = Receiver(SECRET, fail_first=2)
    undelivered: list[tuple[str, str]] = []
    try:
        sink = WebhookSink(r.url, SECRET, attempts=2, backoff=0.5,
                           on_give_up=lambda a, why: undelivered.append((a.alert_id, why)))
        first, *rest = [_alert(rule) for rule in ("budget.exceeded", "token.suspended", "canary.read")]
        for a in (first, *rest):
            sink.emit(a)
        assert sink.flush(30)
        assert undelivered == [(first.alert_id, "HTTP 503")]
        assert [alert["alert_id"] for _, alert in r.received] == [a.alert_id for a in rest]
        assert (r.posts, sink.delivered, sink.failed) == (4, 2, 1)
        sink.close()
    finally:
        r.close()


def test_closing_the_sink_gives_up_a_held_alert_at_once() -> None:
    """close() does not wait out a long backoff: the alert held gets one last attempt and, failing,
    is handed on as undelivered rather than dropped without a word."""
    r = Receiver(SECRET, fail_first=100)
    undelivered: list[str] = []
    try:
        sink = WebhookSink(r.url, SECRET, backoff=60,
                           on_give_up=lambda a, why: undelivered.append(a.alert_id))
        a = _alert()
        sink.emit(a)
        deadline = time.monotonic() + 10
        while r.posts < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sink.close()  # waits 5 s at most for the sender; its backoff here is 60 s
        assert undelivered == [a.alert_id] and (sink.delivered, sink.failed) == (0, 1)
        assert r.posts in (1, 2)  # the last attempt is skipped if close() came before the backoff
    finally:
        r.close()


def _trickler(stop: threading.Event) -> tuple[socket.socket, int]:
    """A receiver that answers, one byte at a time and never done: each byte comes well within
    the sender's timeout, so no read ever times out."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                    if stop.is_set():
                        return
                    conn.sendall(bytes([b]))
                    time.sleep(0.05)
            except OSError:
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_a_receiver_that_answers_a_byte_at_a_time_does_not_hold_the_alerts_forever() -> None:
    """In-order delivery holds every later alert while one is being sent: a receiver that
    keeps a delivery alive by answering one byte at a time (each read well within the
    timeout) would hold them for ever. An attempt as a whole is bounded: the alert is given
    up after its attempts, and the next one goes."""
    stop = threading.Event()
    srv, port = _trickler(stop)
    undelivered: list[tuple[str, str]] = []
    try:
        hook = WebhookSink(f"http://127.0.0.1:{port}/hook", SECRET, attempts=2, backoff=0.05,
                           timeout=0.3, on_give_up=lambda a, why: undelivered.append((a.alert_id, why)))
        first, second = _alert(), _alert("canary.read", "critical")
        t0 = time.monotonic()
        hook.emit(first)
        hook.emit(second)
        assert hook.flush(15)
        assert time.monotonic() - t0 < 10
        assert [i for i, _ in undelivered] == [first.alert_id, second.alert_id]
        assert all("deadline" in why for _, why in undelivered)
        hook.close()
    finally:
        stop.set()
        srv.close()


@pytest.mark.parametrize("tolerance, now", [(float("nan"), None), (float("inf"), None), (300, float("nan")),
                                            ("300", None)])
def test_a_tolerance_or_clock_that_is_not_a_number_does_not_let_a_replay_through(
        tolerance: float, now: float | None) -> None:
    """A receiver reading its tolerance from a setting ("nan", "inf") or its clock from a
    broken source would compare a NaN: every comparison is false, so a delivery signed a year
    ago passed for fresh. Such a tolerance or clock is refused, not trusted."""
    body = _alert().to_json()
    old = int(time.time()) - 365 * 86400
    header = sign_webhook(SECRET, body, timestamp=old)
    with pytest.raises(PivaultError) as exc:
        verify_webhook(SECRET, header, body, tolerance=tolerance, now=now)
    assert exc.value.code in ("webhook.tolerance", "webhook.clock")


def test_an_unexpected_error_in_a_delivery_gives_the_alert_up_and_the_sender_lives_on() -> None:
    """An error the HTTP client does not class as an HTTP error (here a URL it cannot parse,
    given as the webhook's address) ended the sender thread: the alert was neither delivered
    nor handed on as undelivered, and flush() waited for it for ever. It is given up, with the
    error's name, and the alerts after it are still handled."""
    undelivered: list[tuple[str, str]] = []
    hook = WebhookSink("http://127.0.0.1:1/hook", SECRET, attempts=3, backoff=0.01,
                       on_give_up=lambda a, why: undelivered.append((a.alert_id, why)))
    hook.url = "http://[::1/hook"  # as a bad address reaches the client
    first, second = _alert(), _alert("canary.read", "critical")
    hook.emit(first)
    hook.emit(second)
    assert hook.flush(5)
    assert undelivered == [(first.alert_id, "InvalidURL"), (second.alert_id, "InvalidURL")]
    assert (hook.delivered, hook.failed) == (0, 2)
    hook.close()


def test_a_webhook_address_that_is_not_http_is_refused_when_configured() -> None:
    for url in ("http://[::1/hook", "ftp://127.0.0.1/hook", "hook.example/x", "file:///etc/passwd"):
        with pytest.raises(PivaultError) as exc:
            WebhookSink(url, SECRET)
        assert exc.value.code == "alert.webhook"


def test_a_worker_forked_while_the_sender_held_its_lock_still_sends() -> None:
    """A serve worker is forked from a process whose sender thread may, at that instant, hold
    the sink's lock (it takes it after each alert): the child inherits the lock held by a
    thread it does not have, and its first alert would wait on it for ever, holding the
    request that raised it. The child starts with its own locks and queue."""
    import os
    import signal

    r = Receiver(SECRET)
    try:
        hook = WebhookSink(r.url, SECRET)
        hook.emit(_alert())  # the sender is up and idle
        assert hook.flush(5)
        held = threading.Event()
        release = threading.Event()

        def sender_busy() -> None:  # as the sender thread does in _done()
            with hook._idle:
                held.set()
                release.wait(10)

        t = threading.Thread(target=sender_busy)
        t.start()
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a worker stuck for ever is killed
                signal.alarm(5)
                hook.emit(_alert())
                code = 0 if hook.flush(4) else 2
            finally:
                os._exit(code)
        release.set()
        t.join()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert len(r.received) == 2
        hook.close()
    finally:
        r.close()


def test_closing_the_sink_hands_on_every_alert_it_could_not_send_before_it_returns() -> None:
    """close() waits 5 s for the sender. Alerts still queued behind a receiver that never
    answers were left to a thread the process ends with: they vanished without an
    undelivered trace. When close() returns, every alert but the one in its last attempt
    has been handed on as undelivered."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # accepts connections, never answers
    undelivered: list[str] = []
    lock = threading.Lock()

    def gave_up(alert: Alert, reason: str) -> None:
        with lock:
            undelivered.append(alert.alert_id)

    try:
        hook = WebhookSink(f"http://127.0.0.1:{hang.getsockname()[1]}/hook", SECRET, attempts=1,
                           timeout=2.0, on_give_up=gave_up)
        raised = [_alert() for _ in range(8)]
        for a in raised:
            hook.emit(a)
        t0 = time.monotonic()
        hook.close()
        assert time.monotonic() - t0 < 6.5
        with lock:
            assert len(undelivered) >= len(raised) - 1
        assert hook.flush(10)
        assert sorted(undelivered) == sorted(a.alert_id for a in raised)
    finally:
        hang.close()


def test_a_name_lookup_that_hangs_does_not_hold_the_alerts_forever(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attempt's deadline cut its connection, but a name lookup comes before there is one:
    a resolver that never answered held the alert, and every alert behind it, for as long as
    the resolver waited. The attempt is now given up at its deadline; once the resolver answers
    again the alerts go, and the attempts left behind never deliver late (out of order)."""
    real = socket.getaddrinfo
    answered = threading.Event()

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "alerts.receiver.test":
            answered.wait(30)  # the resolver's servers are unreachable until the test says so
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    undelivered: list[tuple[str, str]] = []
    hook = WebhookSink(f"http://alerts.receiver.test:{port}/hook", SECRET, attempts=2, backoff=0.05,
                       timeout=0.2, on_give_up=lambda a, why: undelivered.append((a.alert_id, why)))
    first, second = _alert(), _alert("canary.read", "critical")
    t0 = time.monotonic()
    hook.emit(first)
    hook.emit(second)
    assert hook.flush(20)
    assert time.monotonic() - t0 < 12  # two alerts, two attempts each, 0.6 s deadline + 1 s grace
    assert [i for i, _ in undelivered] == [first.alert_id, second.alert_id]
    assert all("name lookup" in why for _, why in undelivered)
    # the resolver answers again: the next alert is delivered, and the attempts left in their
    # lookups find their deadline passed when they connect (no late copy of a given-up alert)
    answered.set()
    third = _alert("budget.vault", "critical")
    hook.emit(third)
    assert hook.flush(10)
    time.sleep(0.5)
    assert [json.loads(body)["alert_id"] for _, body in receiver.deliveries] == [third.alert_id]
    assert receiver.posts == 1
    hook.close()
