"""The service middleware on its own: body limit (also for chunked uploads), timeout,
an exception's message never leaves, one access-log line per request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pivault.api.middleware import AccessLog, ServiceMiddleware
from pivault.api.problems import validation_problem

SECRET = "11010519491231002X"


async def inner(scope: Any, receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(5)
    if path == "/boom":
        raise RuntimeError(f"database said: duplicate key {SECRET}")
    body = b""
    if scope["method"] == "POST":
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
    scope["state"]["principal"] = "tester"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"server", b"leaky/1.0")]})
    await send({"type": "http.response.body", "body": json.dumps({"n": len(body)}).encode()})


def client(tmp_path: Path, **kw: Any) -> tuple[httpx.AsyncClient, Path]:
    log = tmp_path / "logs" / "access.log"
    app = ServiceMiddleware(inner, access_log=AccessLog(log, stderr=False), **kw)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), log


def test_limits_timeout_errors_and_log(tmp_path: Path) -> None:
    async def go() -> None:
        c, log = client(tmp_path, max_body=1000, timeout=0.3, tls=True)
        async with c:
            ok = await c.post("/echo", content=b"x" * 1000)
            assert ok.json() == {"n": 1000}
            assert "server" not in ok.headers and ok.headers["x-request-id"].startswith("q_")
            assert ok.headers["strict-transport-security"].startswith("max-age=")

            async def chunks() -> Any:
                for _ in range(5):
                    yield b"y" * 300

            big = await c.post("/echo", content=chunks())  # no Content-Length: counted as it arrives
            assert big.status_code == 413 and big.json()["code"] == "request.too_large"
            declared = await c.post("/echo", content=b"z" * 1001)
            assert declared.status_code == 413
            slow = await c.get("/slow")
            assert slow.status_code == 503 and slow.json()["code"] == "request.timeout"
            boom = await c.get("/boom")
            assert boom.status_code == 500 and boom.json()["code"] == "internal"
            assert SECRET not in boom.text and "RuntimeError" not in boom.text
            assert boom.headers["content-type"] == "application/problem+json"
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        assert [x["status"] for x in lines] == [200, 413, 413, 503, 500]
        assert lines[0]["principal"] == "tester" and lines[0]["route"] == "-"
        assert lines[-1]["error"] == "RuntimeError" and any("inner" in w for w in lines[-1]["where"])
        assert SECRET not in log.read_text()
        assert oct(log.stat().st_mode & 0o777) == "0o600"

    asyncio.run(go())


@pytest.mark.parametrize(("loc", "kind", "shown"), [
    (("body", "id_number"), "string_too_short", ["body", "id_number"]),
    (("body", "items", 3, "name"), "missing", ["body", "items", 3, "name"]),
    (("body", SECRET), "string_too_short", ["body", "*"]),
    (("body", "张三"), "missing", ["body", "*"]),
    # a key the client invented is never echoed, even one shaped like a field name (a pinyin name)
    (("body", "wang_xiaoming"), "extra_forbidden", ["body", "*"]),
    (("body", "items", 3, "zhang_san"), "extra_forbidden", ["body", "items", 3, "*"]),
])
def test_validation_errors_keep_only_safe_locations(loc: tuple[Any, ...], kind: str,
                                                    shown: list[Any]) -> None:
    out = validation_problem([{"loc": loc, "msg": "Extra inputs are not permitted", "type": kind,
                               "input": SECRET, "ctx": {"x": SECRET}}])
    assert out == [{"loc": shown, "type": kind, "msg": "Extra inputs are not permitted"}]
