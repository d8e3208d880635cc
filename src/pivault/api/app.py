"""The HTTP API: a thin skin over the Vault, with authentication in front of everything.

Order of a request: size limit → bearer token (every path but ``/healthz``,
including unknown paths and the OpenAPI document, so an anonymous caller
learns nothing, not even which routes exist) → route → the route's
operation and the ``X-Purpose`` checked against the caller's role → the
Vault, whose :class:`~pivault.policy.guard.PolicyGuard` decides again,
audits, decrypts and masks → the response keeps only the fields the role
sees. PI travels only in request bodies, never in a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote_plus

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from pivault import __version__
from pivault.api import schemas as s
from pivault.api.middleware import AccessLog, Message, Receive, Scope, Send, ServiceMiddleware
from pivault.api.problems import Problem, problem_response, validation_problem
from pivault.errors import NotFoundError, PivaultError, ValidationError
from pivault.model import is_record_id
from pivault.policy.context import PURPOSE_NAME, AccessContext
from pivault.policy.guard import PolicyGuard
from pivault.policy.policy import PI_OPERATIONS, WRITABLE_FIELDS, Policy, PolicyError
from pivault.policy.tokens import AuthError, TokenInfo, TokenStore, parse_duration
from pivault.store.db import Database

__all__ = ["OPEN_PATHS", "ROUTES", "PolicyHolder", "ServiceConfig", "VaultLike", "create_app"]

#: the only paths a caller without a token may reach
OPEN_PATHS: frozenset[str] = frozenset({"/healthz"})
LOOKUP_PATH = "/v1/residents/lookup"
_PURPOSE = PURPOSE_NAME
_RECORD_ID = r"^r_[0-9a-z]{26}$"
_TOKEN_ID = r"^[0-9a-f]{16}$"
#: the policy's operations -> the Vault's names for them (as the audit trail records them)
_VAULT_OP: dict[str, str] = {"lookup": "find", "read": "get", "create": "put", "update": "update",
                             "erase": "erase", "export": "export", "audit": "stats", "admin": "admin"}
#: what the audit trail records for a stated purpose that no role of the policy has
UNKNOWN_PURPOSE = "?"
LEGAL_BASIS = "PIPL art. 45 (right to copy); GDPR art. 15 (right of access)"

#: (method, path, operation, who) for the startup banner and the docs
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/healthz", "-"),
    ("GET", "/v1/openapi.json", "any valid token"),
    ("POST", "/v1/residents", "create"),
    ("POST", "/v1/residents/batch", "create"),
    ("POST", "/v1/residents/lookup", "lookup"),
    ("GET", "/v1/residents/{record_id}", "read"),
    ("PATCH", "/v1/residents/{record_id}", "update"),
    ("DELETE", "/v1/residents/{record_id}", "erase"),
    ("POST", "/v1/rights/{record_id}/copy", "export and read"),
    ("GET", "/v1/stats", "audit or admin"),
    ("POST", "/v1/admin/tokens", "admin"),
    ("GET", "/v1/admin/tokens", "admin"),
    ("DELETE", "/v1/admin/tokens/{token_id}", "admin"),
    ("POST", "/v1/admin/policy/reload", "admin"),
)


class VaultLike(Protocol):
    """The Vault's public methods the API uses (see :class:`pivault.vault.Vault`)."""

    db: Database
    guard: Any

    def put(self, record: Any, *, ctx: AccessContext) -> str: ...
    def get(self, record_id: str, *, ctx: AccessContext) -> dict[str, str | None]: ...
    def subject_copy(self, record_id: str, *, ctx: AccessContext) -> dict[str, str | None]: ...
    def find(self, *, id_number: str | None = None, mobile: str | None = None, name: str | None = None,
             birth_date: Any = None, ctx: AccessContext) -> list[dict[str, str | None]]: ...
    def update(self, record_id: str, changes: Any, *, ctx: AccessContext) -> None: ...
    def erase(self, record_id: str, *, ctx: AccessContext) -> None: ...
    def stats(self, *, ctx: AccessContext, key_usage: bool = ...) -> dict[str, Any]: ...


class PolicyHolder:
    """The current policy of one worker, swapped whole on reload.

    A reload on one worker writes a marker file holding the text it validated;
    every worker looks at the marker's mtime on each request (one ``stat``,
    about a microsecond) and takes that text when it changed, so ``POST
    /v1/admin/policy/reload`` reaches all the workers of a server, not only
    the one that took the request, with the same policy. (The workers used to
    read the policy file itself when they next served a request: one that
    served none between a reload and a later edit of the file took the edit,
    which nobody had reloaded — a broader policy, or an invalid one, which it
    refused, staying on the policy from before the reload.) An invalid file
    never replaces a valid policy.

    ``pivault serve`` writes the marker too, before it starts any worker, with
    the text it checked at start, and every worker it starts — at start, or
    later in place of one that died — takes its policy from the marker
    (:meth:`resume`), not from the file: a worker started after a reload runs
    what the others run, not an edit of the file nobody reloaded, nor the file
    as it was before a reload.
    """

    def __init__(self, policy: Policy, *, path: Path | None = None, marker: Path | None = None) -> None:
        self._policy = policy
        self.path = path
        self.marker = marker
        self._seen = self._marker_mtime()
        self._lock = threading.Lock()

    @classmethod
    def resume(cls, marker: Path, *, path: Path | None = None) -> PolicyHolder:
        """The holder of a worker of a running server: the policy the marker holds, checked.

        The marker is the last policy accepted on this server (at its start, or by a reload);
        the file may have been edited since. Raises :class:`PolicyError` when the marker is
        missing, unreadable or damaged: a worker that cannot tell what the others run does
        not start (it would serve the file's policy, which nobody may have accepted).
        """
        seen = _file_id(marker)  # before the text: a reload in between is taken on the next request
        if seen == (0, 0):
            raise PolicyError("the server's policy marker is missing; restart pivault serve",
                              code="policy.unreadable")
        holder = cls(_read_marker(marker, str(path) if path is not None else "<default policy>"),
                     path=path, marker=marker)
        holder._seen = seen
        return holder

    @staticmethod
    def publish(marker: Path, text: str) -> None:
        """Make ``text`` (a policy already checked) the one every worker of the server runs.

        Written to a new file moved over the marker, so a worker reads the old text or the new,
        never part of one; 0600, since a policy says who may see what.
        """
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        tmp = marker.with_name(marker.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{digest} {time.time_ns()}\n{text}")
        os.replace(tmp, marker)

    def _marker_mtime(self) -> tuple[int, int]:
        return (0, 0) if self.marker is None else _file_id(self.marker)

    def peek(self) -> Policy:
        """The policy as last checked, without looking at the marker (for the guard, mid-request)."""
        return self._policy

    def current(self) -> Policy:
        if self.marker is not None:
            seen = self._marker_mtime()
            if seen != self._seen:
                with self._lock:
                    if seen != self._seen:
                        self._seen = seen
                        try:
                            self._policy = self._from_marker()
                        except PolicyError as exc:
                            sys.stderr.write(f"pivault: policy reload refused, keeping the old one: {exc}\n")
        return self._policy

    def _source(self) -> str:
        return str(self.path) if self.path is not None else "<default policy>"

    def _from_marker(self) -> Policy:
        """The policy another worker validated and made current (the marker's text, checked)."""
        assert self.marker is not None
        return _read_marker(self.marker, self._source())

    def reload(self) -> Policy:
        """Validate the policy file and make it current here and on every worker."""
        # the text validated here is the text every worker takes, byte for byte: the file may
        # change again before another worker looks
        text = Policy.default_text() if self.path is None else Policy.read_text(self.path)
        new = Policy.loads(text, source=self._source())
        with self._lock:
            self._policy = new
            if self.marker is not None:
                self.publish(self.marker, text)
                self._seen = self._marker_mtime()
        return new


def _file_id(path: Path) -> tuple[int, int]:
    """(inode, mtime) of ``path``, (0, 0) if there is none.

    The marker is replaced (a new inode) on each reload: inode and mtime together tell a new
    reload even on a file system with coarse timestamps.
    """
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _read_marker(marker: Path, source: str) -> Policy:
    """The policy a marker holds: its text checked against its digest, then as a policy."""
    try:
        head, _, text = marker.read_text(encoding="utf-8").partition("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the reload marker ({type(exc).__name__})",
                          code="policy.unreadable") from None
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != head.split(" ", 1)[0]:
        raise PolicyError("the reload marker is damaged (its text does not match its digest)",
                          code="policy.unreadable")
    return Policy.loads(text, source=source)


@dataclass
class ServiceConfig:
    """Limits and switches of one service instance."""

    tls: bool = False
    max_body: int = 1024 * 1024
    timeout: float = 30.0
    access_log: Path | None = None
    log_to_stderr: bool = True
    #: run Vault calls on the event loop (fast: lookups are short and each
    #: worker serialises on its one store connection anyway) or in threads
    inline: bool = True
    #: serve well-formed lookups without FastAPI's routing and dependency machinery
    #: (same checks, same responses; see ``fast_lookup``); off only to compare the two
    fast_lookup: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Caller:
    token: TokenInfo
    purpose: str
    policy: Policy
    request_id: str
    #: the request asked for full values (a reveal, a rights copy): its entries say so, even
    #: an entry of a request refused or rejected before the Vault was asked
    asked_reveal: bool = False

    def ctx(self, *, reveal: bool = False) -> AccessContext:
        return AccessContext(principal=self.token.principal, role=self.token.role, purpose=self.purpose,
                             request_id=self.request_id, reveal=reveal, token_id=self.token.token_id,
                             source="api")


def _status_for(exc: PivaultError) -> int:
    code = exc.code or ""
    if isinstance(exc, AuthError):
        return 401
    if code.startswith("budget."):
        return 429
    if code == "detect.unavailable":
        return 503  # the shared budget counters are down: fail closed, try again later
    if isinstance(exc, PermissionError) or code.startswith("policy."):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ValidationError):
        return 422
    if code in ("record.duplicate", "store.duplicate_id"):
        return 409
    return 500


def _problem_for(exc: PivaultError, request_id: str | None) -> Response:
    status = _status_for(exc)
    if status == 500:
        # internal errors: the code helps the operator, the message stays in-house
        return problem_response(500, "internal", "the request failed inside the service; "
                                "the request id identifies it in the server's log", request_id)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError) and exc.field:
        extra["field"] = exc.field
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="pivault"'
    retry_after = getattr(exc, "retry_after", None)
    if status in (429, 503):
        headers["Retry-After"] = str(int(retry_after) if isinstance(retry_after, int | float) else 5)
    return problem_response(status, exc.code, exc.message, request_id, headers=headers, extra=extra)


def _request_id(request: Request) -> str | None:
    rid = request.scope.get("state", {}).get("request_id")
    return str(rid) if rid else None


def _repeated_query(query: bytes) -> bool:
    """Whether a query string names one parameter twice (``?reveal=false&reveal=true``)."""
    if not query:
        return False
    names = [unquote_plus(part.split("=", 1)[0]) for part in query.decode("latin-1").split("&") if part]
    return len(names) != len(set(names))


def _json_or_absent(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = bytes(value).split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


class _DuplicateKey(json.JSONDecodeError):
    """A JSON object of a request body names one key twice."""

    def __init__(self, doc: str, asks_reveal: bool) -> None:
        super().__init__("an object names a key twice", doc, 0)
        #: one of the values was ``"reveal": true``: the request asked for full values
        self.asks_reveal = asks_reveal


class _Repeated(Exception):
    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.pairs = pairs


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Repeated(pairs)
    return out


def loads_body(body: bytes) -> Any:
    """A request body's JSON, read one way only: UTF-8, each key of an object once.

    ``json.loads`` takes the last of two values of a key and decodes UTF-16 and UTF-32 as well:
    a proxy or gateway in front that reads the first value (as many parsers do), or reads the
    UTF-8 that JSON on the wire must be, would see another resident or no reveal where this
    service serves one. A body that is not UTF-8 raises :class:`UnicodeDecodeError` (a leading
    byte order mark is allowed); an object naming a key twice, or a number too long to read,
    :class:`json.JSONDecodeError`.
    """
    text = body.decode("utf-8-sig")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _Repeated as exc:
        raise _DuplicateKey(text, any(k == "reveal" and v is True for k, v in exc.pairs)) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer of more digits than Python converts
        raise json.JSONDecodeError("a number is too long", text, 0) from None


class _BodyRequest(Request):
    """A request whose JSON body is read by :func:`loads_body`, the one way the service reads it."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_body(await self.body())
            except _DuplicateKey as exc:
                # for the entry of the rejected request: it asked for full values too
                self.scope.setdefault("state", {})["body_asks_reveal"] = exc.asks_reveal
                raise
        return self._json


class _BodyRoute(APIRoute):
    """FastAPI's route, handing its handler a :class:`_BodyRequest`: bodies parsed by :func:`loads_body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_BodyRequest(request.scope, request.receive))

        return route_handler


def _head_rejection(scope: Scope) -> tuple[int, str, str] | None:
    """What makes a request malformed from its head alone: (status, code, detail), or None.

    Two ``X-Purpose`` headers, or a query parameter given twice (``?reveal=false&reveal=true``):
    a proxy in front may read one of them and this service another. A body that is not JSON.
    Asked by the route's caller check, not before routing, so that a valid token's request
    refused for it is recorded under the route's operation like any other it sends.
    """
    if sum(1 for name, _ in scope.get("headers", ()) if name == b"x-purpose") > 1:
        return 400, "purpose.invalid", "send one X-Purpose header, not several"
    if _repeated_query(scope.get("query_string", b"")):
        return 400, "request.query", "send each query parameter once"
    if scope.get("method") in ("POST", "PUT", "PATCH") and not _json_or_absent(scope):
        return 415, "request.media_type", "send the body as JSON (Content-Type: application/json)"
    return None


async def _no_receive() -> Message:
    # a response sent in full never reads the request again
    return {"type": "http.disconnect"}


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with ``first`` (already taken from it) handed out again first."""
    pending: list[Message] = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _install_guard(vault: VaultLike, holder: PolicyHolder) -> PolicyGuard:
    current = vault.guard
    delegate = current.delegate if isinstance(current, PolicyGuard) else current
    from pivault.vault.guard import AccessDenied as VaultAccessDenied

    # the route's dependency called holder.current() at the start of the request;
    # the guard, called several times per request, reads the same policy
    guard = PolicyGuard(holder.peek, delegate=delegate, denied=VaultAccessDenied)
    vault.guard = guard
    return guard


def create_app(vault: VaultLike, policy: Policy | PolicyHolder, *, tokens: TokenStore | None = None,
               config: ServiceConfig | None = None) -> FastAPI:
    """The ASGI application serving ``vault`` under ``policy``.

    Installs a :class:`PolicyGuard` as the vault's guard (keeping the
    previous guard as the delegate for budgets and audit).
    """
    cfg = config or ServiceConfig()
    holder = policy if isinstance(policy, PolicyHolder) else PolicyHolder(policy)
    token_store = tokens or TokenStore(vault.db)
    _install_guard(vault, holder)
    access_log = AccessLog(cfg.access_log, stderr=cfg.log_to_stderr) if (
        cfg.access_log is not None or cfg.log_to_stderr) else None

    app = FastAPI(
        title="pivault", version=__version__,
        description="Privacy vault for personal information. Every route but GET /healthz needs a "
                    "bearer token; PI routes need an X-Purpose header from the caller's role.",
        # a route with a trailing slash is not found, not redirected: the redirect's target is built
        # from the client's Host header, and a 307 has the client send its body (PI) there again
        redirect_slashes=False,
        openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
        # FastAPI's OpenTelemetry hooks off: what the service records leaves through its own
        # access log and audit trail only, never through an exporter switched on by an
        # environment variable (and the check for one costs ~5 µs on every request)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # every route reads its JSON body one way only (loads_body)
    app.router.route_class = _BodyRoute

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if cfg.inline:
            return fn(*args, **kwargs)
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- errors ---------------------------------------------------------------
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.code, exc.detail, _request_id(request), headers=exc.headers,
                                extra=exc.extra)

    @app.exception_handler(PivaultError)
    async def _pivault_error(request: Request, exc: PivaultError) -> Response:
        if _status_for(exc) >= 500:
            # for the access log: the error's type and stable code (never its message)
            request.scope.setdefault("state", {})["error"] = f"{type(exc).__name__}:{exc.code}"
        return _problem_for(exc, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        audit_rejected(request)
        return problem_response(422, "request.invalid", "the request does not match the API schema",
                                _request_id(request), extra={"errors": validation_problem(exc.errors())})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # the middleware logs the exception's type and place; the body says nothing of it
        return problem_response(500, "internal", "the request failed inside the service; "
                                "the request id identifies it in the server's log", _request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "route.not_found", 405: "method.not_allowed"}.get(exc.status_code, "http.error")
        detail = {404: "no such route", 405: "this route does not accept this method"}.get(
            exc.status_code, "the request was refused")
        if exc.status_code == 400:
            # FastAPI could not read the body (loads_body): rejected as malformed, and recorded so
            if isinstance(exc.__cause__, UnicodeDecodeError):
                detail = "the body is not UTF-8"
            audit_rejected(request)
        return problem_response(exc.status_code, code, detail, _request_id(request),
                                headers=dict(exc.headers or {}))

    # -- authorisation per route ------------------------------------------------
    def audit_refusal(ctx: AccessContext, operation: str, record_ids: tuple[str, ...],
                      outcome: str = "denied") -> None:
        """Record a refusal decided at the route, which never reaches the Vault, through its guard.

        ``outcome`` is ``denied`` for the policy's refusals and ``invalid`` for a request
        rejected as malformed (its values never recorded).
        """
        try:
            vault.guard.audit(ctx, operation, record_ids, outcome)
        except Exception as exc:  # the refusal stands; the log names the failure's type
            sys.stderr.write(f"pivault: could not audit a refusal ({type(exc).__name__})\n")

    def recorded_purpose(pol: Policy, stated: str | None) -> str:
        """The purpose an entry records for a request the Vault never saw: as stated only if the
        policy knows it. The trail is kept for years and cannot be edited, and anything else in the
        header ("id-11010519491231002x") could be a resident's data."""
        if stated is None or not _PURPOSE.fullmatch(stated):
            return "-"
        return stated if stated in pol.purpose_names else UNKNOWN_PURPOSE

    def subjects_of(record_id: str | None) -> tuple[str, ...]:
        """The record a route's path names, only if it is a record id: what else was typed there is
        not recorded."""
        return (record_id,) if record_id is not None and is_record_id(record_id) else ()

    def audit_rejected(request: Request) -> None:
        """Record a request of a valid token that its route rejects as malformed (422, ``invalid``).

        Probing what a route accepts is an access attempt like a refusal: the entry names the
        principal, the route's operation, the record its path names (if that is a record id) and
        the request id, never a value sent (the errors in the answer name places and rules only).
        A caller without a valid token never gets this far (the middleware answers 401 from the
        request's head), so it cannot write entries; a valid token writes one per request, as a
        refused request does, within the limits every request of that token and address has.
        """
        scope = request.scope
        state = scope.get("state", {})
        token: TokenInfo | None = state.get("token")
        dependency = caller_dependency(scope.get("route"))
        if token is None or dependency is None:
            return
        name = invalid_names[dependency]
        caller: Caller | None = state.get("caller")
        if caller is not None:
            ctx = caller.ctx(reveal=caller.asked_reveal)
        else:
            # a body that is no JSON is rejected before the route's dependency runs: who sent it,
            # with the purpose stated if the policy knows it, and whether one of two "reveal" keys
            # of a body asked for full values where the route reads them from its body
            sent = request.headers.getlist("x-purpose")
            stated = sent[0].strip() if len(sent) == 1 else None  # of two, neither is the purpose
            asked = reveal_modes[dependency] == "body" and state.get("body_asks_reveal") is True
            ctx = AccessContext(principal=token.principal, role=token.role,
                                purpose=recorded_purpose(holder.peek(), stated),
                                request_id=_request_id(request) or "", token_id=token.token_id,
                                source="api", reveal=asked)
        record_id = (scope.get("path_params") or {}).get("record_id")
        audit_refusal(ctx, name, subjects_of(record_id if isinstance(record_id, str) else None), "invalid")

    def caller_dependency(route: Any) -> Callable[..., Any] | None:
        """The dependency that checks a route's caller (None: a route without a caller)."""
        dependant = getattr(route, "dependant", None)
        for dep in getattr(dependant, "dependencies", ()):
            call: Callable[..., Any] = dep.call
            if call in invalid_names:
                return call
        return None

    def reject_head(scope: Scope, token: TokenInfo, operation: str, x_purpose: str | None, rid: str, *,
                    record_id: str | None = None, reveal: bool = False) -> None:
        """Refuse, and record as ``invalid`` under ``operation``, a request its head makes malformed.

        Two purposes or a repeated query parameter are how a caller would slip a purpose or a
        reveal past a proxy in front: the trail must show them as it shows any other refusal of a
        valid token's request (with no purpose where two were stated: neither was taken).
        """
        rejected = _head_rejection(scope)
        if rejected is None:
            return
        status, code, detail = rejected
        stated = None if code == "purpose.invalid" or x_purpose is None else x_purpose.strip()
        ctx = AccessContext(principal=token.principal, role=token.role,
                            purpose=recorded_purpose(holder.current(), stated), request_id=rid,
                            token_id=token.token_id, source="api", reveal=reveal)
        audit_refusal(ctx, operation, subjects_of(record_id), "invalid")
        raise Problem(status, code, detail)

    def authorise_caller(token: TokenInfo, operation: str, ops: tuple[str, ...], needs_purpose: bool,
                         x_purpose: str | None, rid: str, *, audit_as: str | None = None,
                         record_id: str | None = None, reveal: bool = False) -> Caller:
        """The caller of a route needing ``ops``, or :class:`Problem` (the refusal audited).

        ``audit_as`` is the name the Vault records the route's call under (a rights copy is an
        export that reads: ``rights.copy``), and ``record_id`` the record the route is about, so
        that a refusal here is found where one at the Vault's door would be. ``reveal``: the
        request asks for full values; its refusal is marked as such (``{"reveal": true}``), as a
        refusal at the Vault's door is, so that an auditor looking for attempts to see full
        values finds those stopped here too.
        """
        pol = holder.current()
        role = pol.role(token.role)
        stated = x_purpose.strip() if x_purpose is not None else None

        def refuse(status: int, code: str, detail: str) -> Problem:
            # a refusal here never reaches the Vault: record it through its guard, so
            # probing for what a token may do shows in the audit trail too
            ctx = AccessContext(principal=token.principal, role=token.role,
                                purpose=recorded_purpose(pol, stated), request_id=rid,
                                token_id=token.token_id, source="api", reveal=reveal)
            audit_refusal(ctx, audit_as or _VAULT_OP.get(operation, operation), subjects_of(record_id))
            return Problem(status, code, detail)

        if role is None:
            raise refuse(403, "policy.role", "the caller's role is not in the current policy")
        granted = [op for op in ops if op in role.operations]
        if not granted:
            raise refuse(403, "policy.operation", f"role {role.name!r} may not {operation}")
        allowed = [p for p in token.purposes if p in role.purposes]
        if stated is None:
            if needs_purpose:
                raise refuse(400, "purpose.missing",
                             "state the purpose of this request in the X-Purpose header; "
                             f"role {role.name!r} may state: {', '.join(allowed) or 'none'}")
            if not allowed:
                raise refuse(403, "policy.purpose", "the token allows none of its role's purposes")
            purpose = allowed[0]
        else:
            purpose = stated
            if not _PURPOSE.fullmatch(purpose):
                raise refuse(400, "purpose.invalid", "X-Purpose is a purpose name "
                             "(lower-case letters, digits, _ . -)")
            if purpose not in allowed:
                raise refuse(403, "policy.purpose",
                             f"this purpose is not allowed for role {role.name!r} and this token; "
                             f"allowed: {', '.join(allowed) or 'none'}")
        # the route's own operation, for the purposes the policy ties it to: the Vault checks its
        # operation, which for a route may be another (a rights copy is an export that reads)
        fits = [op for op in granted
                if (only := role.operation_purposes.get(op)) is None or purpose in only]
        if not fits:
            ties = "; ".join(f"{op} only for {', '.join(sorted(role.operation_purposes[op]))}"
                             for op in granted)
            raise refuse(403, "policy.purpose", f"role {role.name!r} may {ties}")
        return Caller(token=token, purpose=purpose, policy=pol, request_id=rid, asked_reveal=reveal)

    #: each route's dependency -> the operation its rejected (422) requests are recorded under
    invalid_names: dict[Callable[..., Any], str] = {}
    #: each route's dependency -> where its requests ask for full values (see require)
    reveal_modes: dict[Callable[..., Any], str | None] = {}

    async def body_asks_reveal(request: Request) -> bool:
        """Whether the JSON body asks for full values as the route would grant them (``"reveal": true``).

        FastAPI has parsed the body before the dependencies run, and Starlette keeps what it parsed:
        this reads it again at the cost of a lookup. A body that is not JSON asks for nothing.
        """
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # a JSON or UTF-8 error is a ValueError
            return False
        return isinstance(body, dict) and body.get("reveal") is True

    def require(operation: str, *alternatives: str, audit_as: str | None = None,
                invalid_as: str | None = None,
                reveal: str | None = None) -> Callable[..., Awaitable[Caller]]:
        """The dependency that authorises a route's caller (:func:`authorise_caller`).

        ``invalid_as``: the operation a rejected (422) request of the route is recorded under, when
        it is not the one its refusals are (an admin route's ``token.create``, not ``admin``).
        ``reveal``: where the route's request asks for full values — ``"query"`` (``?reveal=true``),
        ``"body"`` (``"reveal": true``) or ``"always"`` (a rights copy) — so that a refusal says so.
        """
        ops = (operation, *alternatives)
        needs_purpose = any(op in PI_OPERATIONS for op in ops)
        refused_as = audit_as or _VAULT_OP.get(operation, operation)

        async def dependency(
            request: Request,
            x_purpose: str | None = Header(
                # no length limit here: an over-long or malformed purpose is refused, and
                # audited, by authorise_caller as 400 purpose.invalid, like any other bad name
                default=None, alias="X-Purpose",
                description="Why the caller acts: one of the purposes its role and token allow"
                            + ("" if needs_purpose else " (optional here)")),
        ) -> Caller:
            state = request.scope["state"]
            token: TokenInfo = state["token"]
            # not validated yet (the route's parameters are, after its dependencies)
            record_id = request.path_params.get("record_id")
            if reveal is None:
                asked = False
            elif reveal == "query":
                # any of them: ?reveal=false&reveal=true asks for full values too (and is refused)
                asked = "true" in request.query_params.getlist("reveal")
            else:
                asked = reveal == "always" or await body_asks_reveal(request)
            rid = _request_id(request) or ""
            reject_head(request.scope, token, invalid_as or refused_as, x_purpose, rid,
                        record_id=record_id if isinstance(record_id, str) else None, reveal=asked)
            caller = authorise_caller(token, operation, ops, needs_purpose, x_purpose, rid,
                                      audit_as=audit_as,
                                      record_id=record_id if isinstance(record_id, str) else None,
                                      reveal=asked)
            # for the handler of a request the route's parameters or body then reject
            state["caller"] = caller
            return caller

        invalid_names[dependency] = invalid_as or refused_as
        reveal_modes[dependency] = reveal
        return dependency

    def view(caller: Caller, record: dict[str, Any]) -> dict[str, Any]:
        """Only the fields the role sees (the guard already masked them; this drops the rest)."""
        role = caller.policy.role(caller.token.role)
        out: dict[str, Any] = {"record_id": record["record_id"]}
        if role is not None:
            for f in role.fields:
                if f in record:
                    out[f] = record[f]
        return out

    def revealed(caller: Caller, reveal: bool) -> list[str]:
        role = caller.policy.role(caller.token.role)
        if not reveal or role is None:
            return []
        return sorted(f for f in role.revealable(caller.purpose) if f in role.fields)

    def json_response(body: dict[str, Any], status: int = 200) -> Response:
        # the hot routes serialise their own dicts: the schema is documented by
        # response_model, and skipping its second validation pass is measurable
        return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")), status_code=status,
                        media_type="application/json")

    problems: dict[int | str, dict[str, Any]] = {c: {"model": s.Problem, "description": d} for c, d in (
        (400, "Bad request (e.g. no X-Purpose, or not HTTP/1.1)"), (401, "No valid bearer token"),
        (408, "The request line and headers did not arrive in time"), (415, "Body is not JSON"),
        (403, "The policy refuses (role, operation, purpose or reveal)"), (413, "Body too large"),
        (422, "Invalid request"), (429, "Read budget spent"), (431, "Request line and headers too large"),
        (500, "Internal error"),
        (503, "Timed out, or the server's or this address's connections are at their limit"))}
    with_404: dict[int | str, dict[str, Any]] = {
        **problems, 404: {"model": s.Problem, "description": "No such record"}}

    # -- routes -----------------------------------------------------------------
    @app.get("/healthz", response_model=s.Health, tags=["health"], openapi_extra={"security": []})
    async def healthz() -> dict[str, str]:
        """Liveness; the only route open without a token. Says nothing about the vault."""
        return {"status": "ok"}

    @app.post("/v1/residents", response_model=s.Created, status_code=201, tags=["residents"],
              responses={**problems, 409: {"model": s.Problem, "description": "ID number already held"}})
    async def create_resident(body: s.ResidentIn, caller: Caller = Depends(require("create"))) -> s.Created:
        """Register one resident."""
        try:
            record_id = await call(vault.put, body.model_dump(), ctx=caller.ctx())
        except ValidationError:
            # the Vault parses a new record before anything is recorded: an ID number with a wrong
            # check character, say, is recorded here (that a create was rejected, never the value)
            audit_refusal(caller.ctx(), "put", (), "invalid")
            raise
        return s.Created(record_id=record_id)

    @app.post("/v1/residents/batch", response_model=s.BatchOut, tags=["residents"], responses=problems)
    async def create_batch(body: s.BatchIn, caller: Caller = Depends(require("create"))) -> s.BatchOut:
        """Register up to 500 residents; each item is accepted or rejected on its own."""
        ctx = caller.ctx()

        def stopped() -> tuple[str, str] | None:
            """Why the rest of the batch is not tried: a spent budget, or a token no longer active."""
            if results and results[-1].code == "budget.exceeded":
                # duplicates charge reads, creates changes: a batch cannot keep asking which numbers exist
                return "budget.exceeded", "not tried: a budget of the caller is spent"
            # the token is read again before each item: an item that trips a canary suspends it (and an
            # admin may revoke it meanwhile, on any worker), and a suspended token asks nothing more,
            # not even in the request that got it suspended
            info = token_store.get(caller.token.token_id)
            state = info.state() if info is not None else "revoked"
            if state != "active":
                return f"auth.{state}", f"not tried: the token is {state}"
            return None

        results: list[s.BatchItemResult] = []
        invalid: list[int] = []

        def run() -> None:
            halt: tuple[str, str] | None = None
            for i, item in enumerate(body.items):
                if halt is None and i > 0:
                    halt = stopped()
                if halt is not None:
                    results.append(s.BatchItemResult(index=i, status="rejected", code=halt[0],
                                                     detail=halt[1]))
                    continue
                try:
                    rid = vault.put(item.model_dump(), ctx=ctx)
                    results.append(s.BatchItemResult(index=i, status="created", record_id=rid))
                except PivaultError as exc:
                    if _status_for(exc) == 500:
                        raise
                    if isinstance(exc, ValidationError):
                        invalid.append(i)
                    results.append(s.BatchItemResult(index=i, status="rejected", code=exc.code,
                                                     detail=exc.message))

        try:
            await run_in_threadpool(run)
        finally:
            # items rejected as malformed are recorded as one entry for the batch, not one each: a
            # batch of 500 bad items must not write 500 entries that no budget charges
            if invalid:
                audit_refusal(ctx, "put", (), "invalid")
        accepted = sum(1 for r in results if r.status == "created")
        return s.BatchOut(read=len(body.items), accepted=accepted, rejected=len(results) - accepted,
                          results=results)

    @app.post("/v1/residents/lookup", response_model=s.LookupOut, tags=["residents"], responses=problems)
    async def lookup(body: s.LookupIn,
                     caller: Caller = Depends(require("lookup", reveal="body"))) -> Response:
        """Find residents by ID number, mobile, or name with birth date (in the body, never the URL)."""
        return await run_lookup(body, caller)

    async def run_lookup(body: s.LookupIn, caller: Caller) -> Response:
        records = await call(vault.find, id_number=body.id_number, mobile=body.mobile, name=body.name,
                             birth_date=body.birth_date, ctx=caller.ctx(reveal=body.reveal))
        return json_response({"count": len(records), "records": [view(caller, r) for r in records],
                              "revealed": revealed(caller, body.reveal)})

    @app.get("/v1/residents/{record_id}", response_model=s.ReadOut, tags=["residents"], responses=with_404)
    async def read_resident(
        record_id: str = PathParam(pattern=_RECORD_ID, max_length=28),
        reveal: str = Query("false", pattern="^(true|false)$",
                            description="true: full values where the policy allows (exactly true or false)"),
        caller: Caller = Depends(require("read", reveal="query")),
    ) -> Response:
        """One resident by its opaque record id, as the caller's role may see it.

        ``reveal`` is ``true`` or ``false`` and nothing else (not ``1``, ``yes`` or ``on``), as a
        lookup's JSON ``reveal`` is: a proxy in front that filters on it must read it as this does.
        """
        full = reveal == "true"
        record = await call(vault.get, record_id, ctx=caller.ctx(reveal=full))
        return json_response({"record": view(caller, record), "revealed": revealed(caller, full)})

    @app.patch("/v1/residents/{record_id}", response_model=s.Updated, tags=["residents"],
               responses={**with_404, 409: {"model": s.Problem, "description": "ID number already held"}})
    async def correct_resident(
        body: s.PatchIn,
        record_id: str = PathParam(pattern=_RECORD_ID, max_length=28),
        caller: Caller = Depends(require("update")),
    ) -> s.Updated:
        """Correct fields of a resident (registrars; DPOs for rights requests). ``null`` clears."""
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            audit_refusal(caller.ctx(), "update", (record_id,), "invalid")
            raise Problem(422, "update.empty", "name at least one field to correct")
        for f in ("name", "id_number"):
            if f in changes and changes[f] is None:
                audit_refusal(caller.ctx(), "update", (record_id,), "invalid")
                raise Problem(422, "update.required", f"{f} cannot be cleared", extra={"field": f})
        await call(vault.update, record_id, changes, ctx=caller.ctx())
        return s.Updated(record_id=record_id, updated=[f for f in WRITABLE_FIELDS if f in changes])

    @app.delete("/v1/residents/{record_id}", status_code=204, tags=["residents"], responses=with_404,
                response_class=Response)
    async def erase_resident(
        record_id: str = PathParam(pattern=_RECORD_ID, max_length=28),
        caller: Caller = Depends(require("erase")),
    ) -> Response:
        """Erase a resident (right to deletion, PIPL art. 47, GDPR art. 17)."""
        await call(vault.erase, record_id, ctx=caller.ctx())
        return Response(status_code=204)

    @app.post("/v1/rights/{record_id}/copy", response_model=s.CopyOut, tags=["rights"], responses=with_404)
    async def rights_copy(
        record_id: str = PathParam(pattern=_RECORD_ID, max_length=28),
        caller: Caller = Depends(require("export", audit_as="rights.copy", reveal="always")),
    ) -> Response:
        """A data subject's full copy of their record (PIPL art. 45, GDPR art. 15)."""
        role = caller.policy.role(caller.token.role)
        assert role is not None
        masked = {f for f, m in role.fields.items() if m != "none"}
        missing = sorted(masked - role.revealable(caller.purpose))
        if missing:
            audit_refusal(caller.ctx(reveal=True), "rights.copy", (record_id,))
            raise Problem(403, "policy.reveal", "a rights copy shows every field in full; for this purpose "
                          f"role {role.name!r} may not reveal: {', '.join(missing)}")
        record = await call(vault.subject_copy, record_id, ctx=caller.ctx(reveal=True))
        return json_response({"record": view(caller, record), "generated_at": time.time(),
                              "legal_basis": LEGAL_BASIS, "request_id": caller.request_id})

    @app.get("/v1/stats", response_model=s.StatsOut, tags=["admin"], responses=problems)
    async def stats(caller: Caller = Depends(require("audit", "admin"))) -> s.StatsOut:
        """Counts and key ids in use; never a value."""
        out = await call(vault.stats, ctx=caller.ctx(), key_usage=False)
        return s.StatsOut(stats=out)

    @app.post("/v1/admin/tokens", response_model=s.TokenCreated, status_code=201, tags=["admin"],
              responses=problems)
    async def create_token(body: s.TokenCreateIn,
                           caller: Caller = Depends(require("admin", invalid_as="token.create"))
                           ) -> s.TokenCreated:
        """Issue a token for a principal; the token is in this response only, never stored."""

        def refused(code: str, detail: str) -> Problem:
            # an admin reaching beyond a role, or for the name of the vault's operator or its
            # watchman, leaves a trace as a refused policy reload does (no subject: nothing was made,
            # and the principal asked for is the admin's text)
            vault.guard.audit(caller.ctx(), "token.create", [], "denied")
            return Problem(422, code, detail)

        pol = holder.current()
        role = pol.role(body.role)
        if role is None:
            # the name asked for is not repeated: an error body never holds what the caller typed
            # (a role name of the pattern can be a resident's name in pinyin and a birth date)
            raise refused("token.role", "no such role in the current policy; its roles: "
                          + ", ".join(pol.roles))
        purposes = body.purposes if body.purposes is not None else list(role.purposes)
        bad = [p for p in purposes if p not in role.purposes]
        if bad or not purposes:
            raise refused("token.purpose", f"role {role.name!r} may state only: {', '.join(role.purposes)}")
        try:
            ttl = parse_duration(body.expires)
            info, token = token_store.create(body.principal, role.name, purposes, ttl_seconds=ttl,
                                             created_by=caller.token.principal)
        except ValueError as exc:
            raise refused("token.invalid", str(exc)) from None
        # token and policy changes go to the audit trail too (subjects: token ids, never secrets)
        vault.guard.audit(caller.ctx(), "token.create", [info.token_id], "ok")
        return s.TokenCreated(token=token, info=s.TokenView.model_validate(info.to_dict()))

    @app.get("/v1/admin/tokens", response_model=s.TokenList, tags=["admin"], responses=problems)
    async def list_tokens(caller: Caller = Depends(require("admin"))) -> s.TokenList:
        """Every token's row (never the token or its hash)."""
        listed = token_store.list()
        # who holds which role, and which tokens are live, is what an intruder maps before
        # choosing whose token to take: the listing is in the trail as a change is (its subjects:
        # the token ids shown)
        vault.guard.audit(caller.ctx(), "token.list", [t.token_id for t in listed], "ok")
        return s.TokenList(tokens=[s.TokenView.model_validate(t.to_dict()) for t in listed])

    @app.delete("/v1/admin/tokens/{token_id}", status_code=204, tags=["admin"], responses=with_404,
                response_class=Response)
    async def revoke_token(token_id: str = PathParam(pattern=_TOKEN_ID, max_length=16),
                           caller: Caller = Depends(require("admin", invalid_as="token.revoke"))
                           ) -> Response:
        """Revoke a token; refused from the next request on, on every worker."""
        if not token_store.revoke(token_id):
            vault.guard.audit(caller.ctx(), "token.revoke", [token_id], "not_found")
            raise Problem(404, "token.not_found", "no active or suspended token with this id")
        vault.guard.audit(caller.ctx(), "token.revoke", [token_id], "ok")
        return Response(status_code=204)

    @app.post("/v1/admin/policy/reload", response_model=s.PolicyReloaded, tags=["admin"], responses=problems)
    async def reload_policy(caller: Caller = Depends(require("admin", invalid_as="policy.change"))
                            ) -> s.PolicyReloaded:
        """Re-read the policy file; an invalid file is refused and the current policy stays."""
        try:
            new = holder.reload()
        except PolicyError as exc:
            vault.guard.audit(caller.ctx(), "policy.change", [], "invalid")
            raise Problem(422, exc.code, exc.message) from None
        vault.guard.audit(caller.ctx(), "policy.change", [], "ok")
        rows = [s.RoleSummary(**{k: r[k] for k in s.RoleSummary.model_fields}) for r in new.explain()]
        return s.PolicyReloaded(source=new.source, roles=rows)

    # -- OpenAPI: problem bodies, bearer auth ----------------------------------------------
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        comps = doc.setdefault("components", {})
        schemas = comps.setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        comps["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "pv_<token_id>_<secret> from `pivault token create`"}}
        doc["security"] = [{"bearer": []}]
        for path_item in doc.get("paths", {}).values():
            for op in path_item.values():
                for param in op.get("parameters", ()):
                    # required wherever the route reads PI (the header's text says where it is
                    # optional); declared optional to FastAPI so that its absence is answered,
                    # and audited, as 400 purpose.missing rather than a 422
                    if param.get("name") == "X-Purpose" and "(optional here)" not in param.get(
                            "description", ""):
                        param["required"] = True
                for code, resp in op.get("responses", {}).items():
                    if code.startswith(("4", "5")):
                        resp["content"] = {"application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    # -- authentication and the service middleware -------------------------------------------
    def authenticate(scope: Scope) -> None:
        raw: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                if raw is not None:
                    # proxies and this service could each take a different one of them
                    raise AuthError("send one Authorization header, not several", code="auth.malformed")
                raw = value
        if raw is None:
            raise AuthError("this route needs a bearer token (Authorization: Bearer pv_…)",
                            code="auth.missing")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("the Authorization header is malformed", code="auth.malformed") from None
        scheme, _, value = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("use the Bearer scheme: Authorization: Bearer pv_…", code="auth.scheme")
        info = token_store.verify(value.strip())
        state = scope.setdefault("state", {})
        state["token"] = info
        state["principal"] = info.principal
        state["role"] = info.role
        state["token_id"] = info.token_id

    # -- the lookup without FastAPI's per-request machinery ---------------------------------
    lookup_route = next(r for r in app.routes if getattr(r, "path", None) == LOOKUP_PATH)
    lookup_ops = ("lookup",)

    async def fast_lookup(scope: Scope, body: bytes, send: Send) -> bool:
        """Serve a well-formed ``POST /v1/residents/lookup`` as the route would; False to let FastAPI.

        The busiest route spends more in FastAPI's routing, dependency solving and
        body handling than in the Vault's door. This takes the same steps with the
        same functions — the body parsed as FastAPI's routes parse it (``loads_body``) and
        validated by the route's model, the caller checked by ``authorise_caller``
        (refusals audited), the Vault called and the response built by
        ``run_lookup``, errors answered by the same problem responses. Anything
        else — a body that does not parse or validate — returns False before any
        effect, and FastAPI serves the request, with its own 422 bodies.
        """
        x_purpose: str | None = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"x-purpose" and x_purpose is None:
                x_purpose = value.decode("latin-1")
            elif name == b"content-type":
                # as FastAPI decides that a body is JSON: application/json or application/*+json
                media = bytes(value).split(b";", 1)[0].strip().lower()
                main, _, sub = media.partition(b"/")
                if (json_body or media.count(b"/") != 1 or main != b"application"
                        or not (sub == b"json" or sub.endswith(b"+json"))):
                    return False
                json_body = True
        if not json_body:
            return False
        try:
            parsed = s.LookupIn.model_validate(loads_body(body))
        except (ValueError, RecursionError, PydanticValidationError):  # a JSON error is a ValueError
            return False
        state = scope["state"]
        rid: str = state["request_id"]
        scope["route"] = lookup_route  # for the access log's route template
        try:
            reject_head(scope, state["token"], "find", x_purpose, rid, reveal=parsed.reveal)
            caller = authorise_caller(state["token"], "lookup", lookup_ops, True, x_purpose, rid,
                                      reveal=parsed.reveal)
            resp = await run_lookup(parsed, caller)
        except Problem as exc:
            resp = problem_response(exc.status, exc.code, exc.detail, rid, headers=exc.headers,
                                    extra=exc.extra)
        except PivaultError as exc:
            if _status_for(exc) >= 500:
                state["error"] = f"{type(exc).__name__}:{exc.code}"
            resp = _problem_for(exc, rid)
        await resp(scope, _no_receive, send)
        return True

    def inactive_token_used(scope: Scope, token: TokenInfo, rid: str) -> None:
        """A genuine token used once expired, revoked or suspended: refused, and recorded as its principal's.

        A token is revoked or suspended because it may have leaked, and whoever still sends it
        holds its secret: the audit trail and the access log name its principal and token id
        (never the token). A token whose secret does not match names nobody, and is not recorded.
        """
        state = scope.setdefault("state", {})
        state["principal"] = token.principal
        state["role"] = token.role
        state["token_id"] = token.token_id
        ctx = AccessContext(principal=token.principal, role=token.role, purpose="-", request_id=rid,
                            token_id=token.token_id, source="api")
        audit_refusal(ctx, "token.use", (token.token_id,))

    def gate(scope: Scope) -> Response | None:
        """What can be refused from the request's head, before any of its body is read."""
        rid = scope.get("state", {}).get("request_id")
        if b"%2f" in scope.get("raw_path", b"").lower():
            # a proxy in front matching on the raw path would see another route than this one
            return problem_response(400, "request.path", "an encoded slash (%2F) is not allowed in a path",
                                    rid)
        if scope.get("path") in OPEN_PATHS:
            return None
        try:
            authenticate(scope)
        except AuthError as exc:
            if exc.token is not None:
                inactive_token_used(scope, exc.token, rid or "")
            return problem_response(401, exc.code, exc.message, rid,
                                    headers={"WWW-Authenticate": 'Bearer realm="pivault"'})
        # two purposes, a repeated query parameter or a body that is not JSON are refused by the
        # route's caller check (reject_head), which records them under the route's operation
        return None

    inner = app.build_middleware_stack

    def build() -> Any:
        fastapi_stack = inner()

        async def lookup_layer(scope: Scope, receive: Receive, send: Send) -> None:
            if (cfg.fast_lookup and scope["type"] == "http" and scope.get("path") == LOOKUP_PATH
                    and scope.get("method") == "POST"):
                message = await receive()
                if (message["type"] == "http.request" and not message.get("more_body", False)
                        and await fast_lookup(scope, message.get("body", b""), send)):
                    return
                receive = _replay(message, receive)
            await fastapi_stack(scope, receive, send)

        return ServiceMiddleware(lookup_layer, max_body=cfg.max_body, timeout=cfg.timeout, tls=cfg.tls,
                                 access_log=access_log, gate=gate)

    app.build_middleware_stack = build  # type: ignore[method-assign]
    app.state.vault = vault
    app.state.holder = holder
    app.state.tokens = token_store
    app.state.config = cfg
    return app
