"""RFC 7807 problem details: the only shape an error leaves the service in.

Every error body is ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail``, a stable ``code`` and the ``request_id``. Bodies are
built only from fixed titles, pivault error messages (which by rule name the
field and the rule, never the value) and field names: never the submitted
values, never a stack trace. FastAPI's default 422 echoes the submitted
``input``; :func:`validation_problem` keeps only where and which rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

__all__ = ["PROBLEM_TYPE_PREFIX", "Problem", "problem_body", "problem_response", "validation_problem"]

PROBLEM_TYPE_PREFIX = "urn:pivault:problem:"
MEDIA_TYPE = "application/problem+json"

TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    408: "Request timeout",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    431: "Request head too large",
    500: "Internal error",
    503: "Service unavailable",
    505: "HTTP version not supported",
}

#: a location element that is safe to echo: a field name or an index; anything
#: else (a key the client invented, which could itself be PI) becomes "*"
_SAFE_LOC = re.compile(r"[a-z_][a-z0-9_]{0,39}")


class Problem(Exception):
    """Raise from a route to answer with a problem body."""

    def __init__(self, status: int, code: str, detail: str, *,
                 headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem_body(status: int, code: str, detail: str, request_id: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return body


def problem_response(status: int, code: str, detail: str, request_id: str | None = None, *,
                     headers: Mapping[str, str] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Response:
    body = json.dumps(problem_body(status, code, detail, request_id, extra), ensure_ascii=False,
                      separators=(",", ":"))
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=dict(headers or {}))


def _safe_loc(loc: Sequence[Any]) -> list[str | int]:
    out: list[str | int] = []
    for part in loc:
        if (isinstance(part, int) and not isinstance(part, bool)) or (
                isinstance(part, str) and _SAFE_LOC.fullmatch(part)):
            out.append(part)
        else:
            out.append("*")
    return out


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors reduced to location, rule and message: no input, no context."""
    out: list[dict[str, Any]] = []
    for e in errors[:20]:
        msg = str(e.get("msg", "invalid"))
        # messages of pydantic's own rules never include the input; cut any
        # "Value error, ..." raised by our validators to their first line anyway
        msg = msg.splitlines()[0][:200] if msg else "invalid"
        loc = _safe_loc(e.get("loc", ()))
        if e.get("type") == "extra_forbidden" and loc:
            loc[-1] = "*"  # the key the client invented, however harmless it looks
        out.append({"loc": loc, "type": str(e.get("type", "invalid"))[:60], "msg": msg})
    return out
