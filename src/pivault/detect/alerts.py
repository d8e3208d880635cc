"""Alerts: what the detectors raise, and where it goes.

An :class:`Alert` names the rule, the principal and token, and the evidence
(counts, time window, opaque record ids) — never PI. Sinks:

* :class:`JsonlSink` — one JSON object per line, appended to a file (0600);
* :class:`TableSink` — the ``alerts`` table, listed and acknowledged with
  ``pivault alerts list`` / ``ack``;
* :class:`WebhookSink` — an HTTP POST of the JSON body with
  ``X-Pivault-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
  sent from a background thread at once, in the order raised, and retried
  with exponential backoff (each attempt signed afresh). Receivers check it
  with :func:`verify_webhook` (or the recipe in ``docs/detect.md``).

:class:`AlertDispatcher` fans an alert out to every sink. A failing sink is
logged and skipped; it never fails the request that raised the alert.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import queue
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pivault.errors import NotFoundError, PivaultError
from pivault.store.db import Database
from pivault.store.migrations import Migration, register

__all__ = [
    "SEVERITIES",
    "Alert",
    "AlertDispatcher",
    "AlertSink",
    "JsonlSink",
    "LogSink",
    "TableSink",
    "WebhookSignatureError",
    "WebhookSink",
    "ack_alert",
    "list_alerts",
    "sign_webhook",
    "verify_webhook",
]

log = logging.getLogger("pivault.detect.alerts")
SEVERITIES = ("info", "warning", "critical")
SIGNATURE_HEADER = "X-Pivault-Signature"
#: how far a delivery's signed time may be from the receiver's clock, by default (seconds)
WEBHOOK_TOLERANCE = 300
_SIG_FIELD = re.compile(r"([a-z][a-z0-9]{0,15})=([^,\s]{1,512})")
_SIG_TIME = re.compile(r"[0-9]{1,15}")
_SIG_MAC = re.compile(r"[0-9a-f]{64}")
_RULE = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")

register(Migration(
    "alerts", 1, "alerts raised by the detectors, with acknowledgement",
    sqlite=("CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,"
            " rule TEXT NOT NULL, severity TEXT NOT NULL, principal TEXT, token_id TEXT,"
            " evidence TEXT NOT NULL, acked_at DOUBLE PRECISION, acked_by TEXT, ack_note TEXT);"
            "CREATE INDEX alerts_ts ON alerts (ts)"),
    postgresql=("CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,"
                " rule TEXT NOT NULL, severity TEXT NOT NULL, principal TEXT, token_id TEXT,"
                " evidence TEXT NOT NULL, acked_at DOUBLE PRECISION, acked_by TEXT, ack_note TEXT);"
                "CREATE INDEX alerts_ts ON alerts (ts)"),
))


def _check_evidence(value: Any, depth: int = 0) -> None:
    if depth > 3:
        raise PivaultError("alert evidence is nested too deeply", code="alert.evidence")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not _KEY.fullmatch(k):
                raise PivaultError("alert evidence keys are short lower-case names", code="alert.evidence")
            _check_evidence(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_evidence(v, depth + 1)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise PivaultError("alert evidence holds text, numbers, lists and tables only",
                           code="alert.evidence")


@dataclass(frozen=True)
class Alert:
    """One detection. ``evidence`` holds counts, windows, rule limits and opaque record ids only."""

    rule: str
    severity: str
    principal: str | None
    token_id: str | None
    evidence: Mapping[str, Any]
    time: float = field(default_factory=time.time)
    alert_id: str = field(default_factory=lambda: "al_" + secrets.token_hex(8))

    def __post_init__(self) -> None:
        if not _RULE.fullmatch(self.rule):
            raise PivaultError("an alert rule is a short lower-case name", code="alert.rule")
        if self.severity not in SEVERITIES:
            raise PivaultError("alert severity is info, warning or critical", code="alert.severity")
        _check_evidence(self.evidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id, "rule": self.rule, "severity": self.severity,
            "principal": self.principal, "token_id": self.token_id,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "ts": self.time, "evidence": dict(self.evidence),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")


class AlertSink(Protocol):
    def emit(self, alert: Alert) -> None: ...


class LogSink:
    """Alerts to the ``pivault.detect.alerts`` logger (no PI: rule, principal, counts)."""

    def emit(self, alert: Alert) -> None:
        level = logging.CRITICAL if alert.severity == "critical" else logging.WARNING
        log.log(level, "alert %s %s principal=%s token=%s", alert.alert_id, alert.rule, alert.principal,
                alert.token_id)


class JsonlSink:
    """Append each alert as one JSON line (file created 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def emit(self, alert: Alert) -> None:
        line = alert.to_json() + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one write with O_APPEND: lines of several workers never interleave
            finally:
                os.close(fd)


class TableSink:
    """The ``alerts`` table of the vault's store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def emit(self, alert: Alert) -> None:
        self.db.execute(
            "INSERT INTO alerts (alert_id, ts, rule, severity, principal, token_id, evidence)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alert.alert_id, alert.time, alert.rule, alert.severity, alert.principal, alert.token_id,
             json.dumps(dict(alert.evidence), sort_keys=True, ensure_ascii=False)))


class WebhookSignatureError(PivaultError):
    """A webhook delivery that must not be trusted: no signature, a malformed or wrong one, or too old.

    The message says which, in one line; it never holds the secret or the body.
    """

    code = "webhook.bad_signature"


def sign_webhook(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The ``X-Pivault-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds).

    ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``: the time is
    signed with the body, so a receiver can refuse a delivery captured and
    replayed later, which a signature over the body alone cannot tell apart.
    """
    mac = hmac.new(secret, str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def _signature_value(headers_or_signature: Mapping[str, str] | str | None) -> str | None:
    if headers_or_signature is None or isinstance(headers_or_signature, str):
        return headers_or_signature
    value = headers_or_signature.get(SIGNATURE_HEADER)
    if value is None:  # header names are case-insensitive; a plain dict keeps the sender's case
        wanted = SIGNATURE_HEADER.lower()
        value = next((v for k, v in headers_or_signature.items() if k.lower() == wanted), None)
    return value


def verify_webhook(secret: bytes | str, headers_or_signature: Mapping[str, str] | str | None,
                   body: bytes, *, tolerance: float = WEBHOOK_TOLERANCE, now: float | None = None) -> int:
    """Check a webhook delivery as a receiver; return its signed time (unix seconds).

    ``headers_or_signature`` is the request's headers (any mapping; the
    ``X-Pivault-Signature`` name is matched without regard to case) or that
    header's value; ``body`` the raw request body, byte for byte, before any
    JSON parsing. Raises :class:`WebhookSignatureError` with code
    ``webhook.no_signature`` (no header), ``webhook.malformed`` (not
    ``t=…,v1=…``), ``webhook.bad_signature`` (no ``v1`` matches: another
    secret, or an altered time or body) or ``webhook.stale`` (signed more
    than ``tolerance`` seconds before or after ``now``, default the clock:
    a replay, or a clock far off). Passing all of them does not make a
    delivery unique: the sender re-sends an alert whose answer it did not
    get, so de-duplicate on the alert id.
    """
    # a NaN compares false with everything: as a tolerance or a clock it would let every
    # delivery, however old, pass for fresh
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance > 0):
        raise PivaultError("the webhook tolerance is a positive number of seconds", code="webhook.tolerance")
    if now is not None and not (isinstance(now, int | float) and math.isfinite(now)):
        raise PivaultError("the receiver's clock is a finite number of seconds", code="webhook.clock")
    if not secret:  # pivault never signs with an empty secret: a receiver without one is misconfigured
        raise PivaultError("the webhook secret is empty", code="webhook.secret")
    value = _signature_value(headers_or_signature)
    if value is None or not value.strip():
        raise WebhookSignatureError(f"the delivery has no {SIGNATURE_HEADER} header",
                                    code="webhook.no_signature")
    if len(value) > 4096:
        raise WebhookSignatureError(f"the {SIGNATURE_HEADER} header is not t=<seconds>,v1=<hex>",
                                    code="webhook.malformed")
    stamps: list[str] = []
    macs: list[str] = []
    for part in value.split(","):
        m = _SIG_FIELD.fullmatch(part.strip())
        if m is None:
            raise WebhookSignatureError(f"the {SIGNATURE_HEADER} header is not t=<seconds>,v1=<hex>",
                                        code="webhook.malformed")
        if m[1] == "t":
            stamps.append(m[2])
        elif m[1] == "v1" and _SIG_MAC.fullmatch(m[2]):
            macs.append(m[2])
        elif m[1] == "v1":
            raise WebhookSignatureError(f"the {SIGNATURE_HEADER} header is not t=<seconds>,v1=<hex>",
                                        code="webhook.malformed")
        # other schemes (a later version) are skipped: a receiver checks the one it knows
    if len(stamps) != 1 or not _SIG_TIME.fullmatch(stamps[0]) or not macs:
        raise WebhookSignatureError(f"the {SIGNATURE_HEADER} header is not t=<seconds>,v1=<hex>",
                                    code="webhook.malformed")
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    timestamp = int(stamps[0])
    want = sign_webhook(key, body, timestamp=timestamp).rsplit("=", 1)[1]
    # every v1 is compared (a sender rolling its secret may sign with two): any one may match
    if not any(hmac.compare_digest(want, got) for got in macs):
        raise WebhookSignatureError("the webhook signature does not match this secret and body",
                                    code="webhook.bad_signature")
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise WebhookSignatureError(f"the webhook delivery was signed {int(clock - timestamp)} s from now,"
                                    f" beyond the {tolerance:g} s tolerance", code="webhook.stale")
    return timestamp


class WebhookSink:
    """POST each alert to ``url`` from a background thread, in order, retried with exponential backoff.

    Delivery starts at once (the request that raised the alert does not
    wait). A 2xx answer ends it; a connection error, a timeout, 408, 429 or
    5xx is retried after ``backoff`` × 2^n seconds (capped at
    ``max_backoff``) up to ``attempts`` times; any other answer (a redirect,
    which is not followed, or a 4xx) is final and counts as a failure.

    Alerts leave in the order this process raised them: one being retried
    holds the ones after it until it is delivered or given up. A receiver
    reads a story from them (budget spent, then token suspended); if a
    later alert overtook an earlier one while it waited out its backoff,
    the story would read backwards. The cost is that a receiver failing on
    one alert only delays the next ones by at most its retries (about 30 s
    of backoff by default, plus ``deadline`` for each attempt that does not
    end), and the cap below still bounds what waits. ``timeout`` bounds each
    step of an attempt (connect, send, each read); ``deadline`` the attempt as
    a whole, which a receiver answering a byte at a time would otherwise
    keep alive for ever.

    Every attempt is signed afresh (:func:`sign_webhook`, time from
    ``clock``), so a retry after minutes is not refused as a replay by a
    receiver that checks the time (:func:`verify_webhook`).

    An alert that never reached the receiver is handed to ``on_give_up``
    (alert, reason): the webhook is often the only place a person watches,
    so its failure must be recorded where the operator looks next (the
    alerts table), not only in a log line.
    """

    def __init__(self, url: str, secret: bytes, *, attempts: int = 8, backoff: float = 0.25,
                 max_backoff: float = 60.0, timeout: float = 3.0,
                 on_give_up: Callable[[Alert, str], None] | None = None,
                 max_queue: int = 10_000, clock: Callable[[], float] = time.time,
                 deadline: float | None = None) -> None:
        if not secret:
            raise PivaultError("a webhook needs a signing secret", code="alert.webhook")
        import httpx

        try:
            scheme = httpx.URL(url).scheme
        except (httpx.InvalidURL, TypeError):
            scheme = ""
        if scheme not in ("http", "https"):  # said now, not by the first alert that is lost
            raise PivaultError("the webhook URL is not an http:// or https:// address", code="alert.webhook")
        self.url = url
        self._secret = secret
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: how long one step of an attempt (connect, send, each read) may wait
        self.timeout = timeout
        #: how long one attempt may take as a whole (default 3 x ``timeout``): a receiver that
        #: answers a byte at a time, each within ``timeout``, is cut off here, so an alert
        #: holding the ones after it holds them for at most ``attempts`` such deadlines
        self.deadline = 3 * timeout if deadline is None else deadline
        self.on_give_up = on_give_up
        #: alerts held at most (queued or being retried): a receiver that hangs while
        #: critical alerts (never suppressed) keep coming must not grow the process without bound
        self.max_queue = max_queue
        #: the time each attempt is signed with (unix seconds)
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._fresh_state()
        _SINKS.add(self)
        #: counts for tests and status: delivered, failed (gave up)
        self.delivered = 0
        self.failed = 0

    def _fresh_state(self) -> None:
        """Locks, queue and counts of a sender that holds nothing yet.

        Also run in a forked child (:func:`_after_fork`): it has none of the parent's
        threads, and a lock one of them held at the fork would be held for ever there.
        """
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        #: attempts left behind past their deadline, still in a name lookup
        self._stuck: list[threading.Thread] = []
        self._closing = threading.Event()
        self._start_lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="pivault-webhook", daemon=True)
                self._thread.start()

    def start(self) -> None:
        """Start the sender now (in this process), so the first alert does not wait for it."""
        self._ensure_thread()

    def emit(self, alert: Alert) -> None:
        self._ensure_thread()
        with self._idle:
            full = self._pending >= self.max_queue
            if not full:
                self._pending += 1
        if full:
            self.failed += 1
            log.warning("webhook queue full (%d alerts held); alert %s not sent", self.max_queue,
                        alert.alert_id)
            self._gave_up(alert, "queue full")
            return
        self._queue.put(alert)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Stop the sender (waiting 5 s at most): from now on no alert waits out a backoff.

        The alert held and those still queued get one more attempt each; one that
        fails then is given up (handed to ``on_give_up``) rather than dropped
        without a word. Those not reached within the 5 s are given up before
        this returns.
        """
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._closing.set()
            self._queue.put(None)
            self._thread.join(5)
            if self._thread.is_alive():
                # still in an attempt: the alerts behind it are given up now, not left to a
                # thread the process may end with before it reaches them
                left: list[Alert] = []
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        left.append(item)
                self._queue.put(None)
                for alert in left:
                    self.failed += 1
                    log.warning("webhook gave up on alert %s: the sink was closed before it could be sent",
                                alert.alert_id)
                    self._gave_up(alert, "closed before it was sent")
                    self._done()

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        import httpx

        # a new connection per attempt: an attempt's deadline is kept by shutting its socket
        with httpx.Client(timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while True:
                alert = self._queue.get()
                if alert is None:
                    return
                self._deliver(client, alert)

    def _deliver(self, client: Any, alert: Alert) -> None:
        """Send one alert until it is delivered or given up; the ones after it wait."""
        tried = 0
        while True:
            outcome, reason = self._post(client, alert)
            if outcome == "delivered":
                self.delivered += 1
                self._done()
                return
            tried += 1
            if outcome == "refused" or tried >= self.attempts or self._closing.is_set():
                self.failed += 1
                log.warning("webhook gave up on alert %s after %d attempts (%s)", alert.alert_id,
                            tried, reason)
                self._gave_up(alert, reason)
                self._done()
                return
            # woken early by close(): one last attempt, then given up if it fails too
            self._closing.wait(min(self.max_backoff, self.backoff * 2 ** (tried - 1)))

    def _gave_up(self, alert: Alert, reason: str) -> None:
        if self.on_give_up is None:
            return
        try:
            self.on_give_up(alert, reason)
        except Exception as exc:  # the sender thread must live on for the next alerts
            log.error("could not record that alert %s was not delivered: %s", alert.alert_id,
                      type(exc).__name__)

    def _post(self, client: Any, alert: Alert) -> tuple[str, str]:
        """One attempt: ("delivered" | "retry" | "refused", reason without the URL or secret)."""
        import httpx

        body = alert.to_json()
        # signed now, not when the alert was raised: a retry minutes later is still fresh
        signature = sign_webhook(self._secret, body, timestamp=int(self.clock()))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature,
                   "X-Pivault-Alert": alert.alert_id}
        sockets: list[Any] = []
        expired = threading.Event()
        lock = threading.Lock()

        def trace(event: str, info: Mapping[str, Any]) -> None:
            """Keep the attempt's socket, so that its deadline can cut it off."""
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                sock = getattr(info.get("return_value"), "get_extra_info", lambda _: None)("socket")
                if sock is not None:
                    with lock:
                        sockets.append(sock)
                        if expired.is_set():
                            _cut(sock)

        def cut_off() -> None:
            with lock:
                expired.set()
                for sock in sockets:
                    _cut(sock)

        # stuck attempts (name lookups that never returned) end on their own or with the process
        self._stuck = [t for t in self._stuck if t.is_alive()]
        if len(self._stuck) >= _MAX_STUCK:
            log.info("webhook delivery of %s not tried: %d name lookups still hanging", alert.alert_id,
                     len(self._stuck))
            return "retry", "name lookups still hanging"
        outcome: list[Any] = []

        def attempt() -> None:
            try:
                outcome.append(client.post(self.url, content=body, headers=headers,
                                           extensions={"trace": trace}))
            except BaseException as exc:  # handed to the sender thread, which decides
                outcome.append(exc)

        timer = threading.Timer(self.deadline, cut_off)
        timer.daemon = True
        timer.start()
        # the attempt in a thread of its own: the deadline cuts a connection it has, but a name
        # lookup (before there is any socket) cannot be cut, and the resolver may wait for its
        # servers for minutes. Left behind, such an attempt can no longer deliver: the moment its
        # connection is made, the trace above finds the deadline passed and cuts it
        sender = threading.Thread(target=attempt, name="pivault-webhook-attempt", daemon=True)
        sender.start()
        sender.join(self.deadline + _CUT_GRACE)
        if sender.is_alive():
            timer.cancel()
            cut_off()
            self._stuck.append(sender)
            reason = f"deadline of {self.deadline:g} s (name lookup)"
            log.info("webhook delivery of %s failed: %s", alert.alert_id, reason)
            return "retry", reason
        if isinstance(outcome[0], BaseException) and not isinstance(outcome[0], Exception):
            timer.cancel()  # the attempt's thread was told to end (not a failure of the receiver)
            return "refused", type(outcome[0]).__name__
        try:
            if isinstance(outcome[0], Exception):
                raise outcome[0]
            resp = outcome[0]
        except httpx.HTTPError as exc:
            reason = f"deadline of {self.deadline:g} s" if expired.is_set() else type(exc).__name__
            log.info("webhook delivery of %s failed: %s", alert.alert_id, reason)
            return "retry", reason
        except Exception as exc:  # not a failure of the receiver: it would end the sender thread
            log.warning("webhook could not send alert %s: %s; not retried", alert.alert_id,
                        type(exc).__name__)
            return "refused", type(exc).__name__
        finally:
            timer.cancel()
        if 200 <= resp.status_code < 300:
            return "delivered", f"HTTP {resp.status_code}"
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            return "retry", f"HTTP {resp.status_code}"
        # a redirect is not followed (the signed alert would go where the receiver says) and a 4xx
        # will answer the same next time: final, and a failure, not a delivery
        log.warning("webhook refused alert %s with HTTP %d; not retried", alert.alert_id, resp.status_code)
        return "refused", f"HTTP {resp.status_code}"


#: how long after its deadline an attempt whose connection was cut is waited for
_CUT_GRACE = 1.0
#: attempts stuck in a name lookup at most: past them none is started until one ends, so a
#: resolver that never answers does not grow the process by a thread per retry
_MAX_STUCK = 4

#: every webhook sink of the process, made fresh in a forked child
_SINKS: weakref.WeakSet[WebhookSink] = weakref.WeakSet()


def _after_fork() -> None:
    for sink in list(_SINKS):
        sink._thread = None
        sink._pid = -1
        sink._fresh_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _cut(sock: Any) -> None:
    """End a connection now: a read waiting on it returns at once (closing alone may not wake it)."""
    import socket

    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class AlertDispatcher:
    """Send alerts to every sink; optionally de-duplicate repeats across workers.

    ``claim(key, ttl)`` (from the shared counters) lets one worker of many
    send a repeated alert (same rule, principal and token) once per
    ``repeat_seconds``; critical alerts are never suppressed.
    """

    def __init__(self, sinks: Sequence[AlertSink] = (), *,
                 claim: Callable[[str, float], bool] | None = None, repeat_seconds: float = 60.0) -> None:
        self.sinks: list[AlertSink] = list(sinks)
        self._claim = claim
        self.repeat_seconds = repeat_seconds

    def raise_alert(self, alert: Alert) -> bool:
        """Emit unless a repeat within ``repeat_seconds``; True if emitted."""
        if self._claim is not None and alert.severity != "critical":
            key = f"alert:{alert.rule}:{alert.principal or '-'}:{alert.token_id or '-'}"
            try:
                if not self._claim(key, self.repeat_seconds):
                    return False
            except PivaultError:
                pass  # the counters are down: send rather than lose the alert
        for sink in self.sinks:
            try:
                sink.emit(alert)
            except Exception as exc:
                log.error("alert sink %s failed for %s: %s", type(sink).__name__, alert.alert_id,
                          type(exc).__name__)
        return True


# -- the alerts table --------------------------------------------------------------

def _row(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "alert_id": row[0], "ts": float(row[1]),
        "time": datetime.fromtimestamp(float(row[1]), UTC).isoformat(timespec="milliseconds"),
        "rule": row[2], "severity": row[3], "principal": row[4], "token_id": row[5],
        "evidence": json.loads(row[6]), "acked_at": row[7], "acked_by": row[8], "ack_note": row[9],
    }


def list_alerts(db: Database, *, unacked: bool = False, since: float | None = None,
                rule: str | None = None, severity: str | None = None,
                limit: int | None = 100) -> list[dict[str, Any]]:
    """Alerts, newest first."""
    where: list[str] = []
    params: list[Any] = []
    if unacked:
        where.append("acked_at IS NULL")
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if rule is not None:
        where.append("rule = ?")
        params.append(rule)
    if severity is not None:
        where.append("severity = ?")
        params.append(severity)
    sql = ("SELECT alert_id, ts, rule, severity, principal, token_id, evidence, acked_at, acked_by, ack_note"
           " FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ts DESC")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_row(r) for r in db.query(sql, params)]


def ack_alert(db: Database, alert_id: str, *, by: str, note: str = "", now: float | None = None) -> None:
    """Mark an alert handled; ``NotFoundError`` if there is no such unacknowledged alert."""
    cur = db.execute("UPDATE alerts SET acked_at = ?, acked_by = ?, ack_note = ?"
                     " WHERE alert_id = ? AND acked_at IS NULL",
                     (time.time() if now is None else now, by, note[:500], alert_id))
    if cur.rowcount != 1:
        raise NotFoundError("no unacknowledged alert with this id", code="alert.not_found")


def sinks_from_config(db: Database | None, *, jsonl: str | None = None, webhook_url: str | None = None,
                      webhook_secret: bytes | None = None, log_sink: bool = True) -> list[AlertSink]:
    """The usual sinks: table (if a store), JSON lines (if a path), webhook (if a URL), log."""
    out: list[AlertSink] = []
    if webhook_url:  # first: handing it to its thread is instant, and it is the one with a deadline
        if not webhook_secret:
            raise PivaultError("the alert webhook needs a secret (PIVAULT_WEBHOOK_SECRET)",
                               code="alert.webhook")
        hook = WebhookSink(webhook_url, webhook_secret)
        out.append(hook)
    if db is not None:
        out.append(TableSink(db))
    if jsonl:
        out.append(JsonlSink(jsonl))
    if log_sink:
        out.append(LogSink())
    if webhook_url:
        others = out[1:]

        def undelivered(alert: Alert, reason: str) -> None:
            """Record, in the other sinks, that the webhook never got ``alert``."""
            trace = Alert("alert.undelivered", "critical", alert.principal, alert.token_id, {
                "alert_id": alert.alert_id, "alert_rule": alert.rule, "alert_severity": alert.severity,
                "sink": "webhook", "reason": reason})
            for sink in others:
                try:
                    sink.emit(trace)
                except Exception as exc:
                    log.error("alert sink %s failed for %s: %s", type(sink).__name__, trace.alert_id,
                              type(exc).__name__)

        hook.on_give_up = undelivered
        hook.start()
    return out
