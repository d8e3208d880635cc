"""Running the service: fail-closed checks, the startup banner, uvicorn.

``serve`` refuses to start rather than start unsafe (the 2022 breach was a
database dashboard on a public address with no login):

- on an address that is not loopback, without TLS;
- with a TLS key file that others can read;
- with a policy that is invalid or grants anything to an anonymous caller;
- with no principal: no active token whose role is in the policy.

Several worker processes (``--workers``) each open the vault themselves: the
parent passes its options in ``PIVAULT_SERVE_OPTIONS`` and uvicorn builds
each worker's app with :func:`app_factory`. On Linux each worker listens on a
socket of its own (:mod:`pivault.api.workers`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import os
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pivault.api.admission import AdmissionLimits
from pivault.api.app import ROUTES, PolicyHolder, ServiceConfig, create_app
from pivault.api.connection import ConnectionLimits, GuardedProtocol
from pivault.api.handshake import ADMISSION_ENV, HANDSHAKE_ENV, admission_env
from pivault.api.workers import balanced, listen_group, serve_workers
from pivault.errors import ConfigError
from pivault.policy.policy import Policy
from pivault.policy.tokens import TokenInfo, TokenStore

__all__ = [
    "OPTIONS_ENV",
    "ServeOptions",
    "ServeRefused",
    "app_factory",
    "banner",
    "is_loopback",
    "preflight",
    "run",
]

OPTIONS_ENV = "PIVAULT_SERVE_OPTIONS"
ACCESS_LOG_NAME = "access.log"
RELOAD_MARKER = "policy.reload"
#: connections and requests in progress a worker takes before it answers 503 (uvicorn's limit_concurrency)
LIMIT_CONCURRENCY = 1000
#: the largest request head (request line and headers), bytes; 431 beyond
MAX_HEAD = 16 * 1024
#: the most new TLS handshakes a second one client address may be allowed at a worker
MAX_HANDSHAKE_RATE = 10_000
#: the budget counters several workers share when none are configured, in ``<home>/run``
COUNTERS_FILE = "counters.db"


class ServeRefused(ConfigError):
    """``serve`` will not start: the message says why and what to do."""

    code = "serve.refused"


@dataclass
class ServeOptions:
    home: str
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    certfile: str | None = None
    keyfile: str | None = None
    #: the policy file; None = the vault's configured one, else the shipped default
    policy: str | None = None
    max_body: int = 1024 * 1024
    timeout: float = 30.0
    #: seconds for a request's head (request line and headers) to arrive whole (api/connection.py)
    head_timeout: float = 10.0
    #: connections one client address may hold open to each worker, TLS handshakes in progress included
    max_client_connections: int = 256
    #: TLS handshakes one client address may start at each worker per second (and at once)
    max_client_handshake_rate: int = 256
    log_to_stderr: bool = True
    #: set by :func:`run` for the workers it starts, not by the operator: the policy is the one
    #: in ``<home>/run/policy.reload`` (the last one accepted on this server), not the file's
    policy_from_marker: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.certfile and self.keyfile)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def log_dir(self) -> Path:
        return Path(self.home) / "logs"

    @property
    def access_log(self) -> Path:
        return self.log_dir / ACCESS_LOG_NAME

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeOptions:
        raw = os.environ.get(OPTIONS_ENV)
        if not raw:
            raise ServeRefused(f"{OPTIONS_ENV} is not set: start the service with `pivault serve`")
        return cls(**json.loads(raw))


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything: treat it as exposed


def policy_path_for(opts: ServeOptions) -> Path | None:
    if opts.policy:
        return Path(opts.policy).expanduser().absolute()
    from pivault.vault.home import load

    configured = load(opts.home).policy_path
    return Path(configured).expanduser().absolute() if configured else None


def load_policy(opts: ServeOptions) -> tuple[Policy, Path | None]:
    policy, path, _ = load_policy_text(opts)
    return policy, path


def load_policy_text(opts: ServeOptions) -> tuple[Policy, Path | None, str]:
    """The policy, its file (None: the shipped default) and the text it was read from.

    The text is read once and checked once: what is handed on to the workers is byte for byte
    what was checked, even if the file changes meanwhile.
    """
    path = policy_path_for(opts)
    if path is None:
        text = Policy.default_text()
        return Policy.loads(text, source="<default policy>"), None, text
    text = Policy.read_text(path)
    return Policy.loads(text, source=str(path)), path, text


def reload_marker(opts: ServeOptions) -> Path:
    """The file holding the policy every worker of the server runs (written at start and on reload)."""
    return Path(opts.home) / "run" / RELOAD_MARKER


@dataclass
class Preflight:
    policy: Policy
    policy_path: Path | None
    principals: list[TokenInfo]
    #: where read budgets are counted, for the banner (no password)
    counters: str = "in-process"
    #: the counters file chosen for several workers when none is configured (given to them)
    counters_url: str | None = None
    #: what holds everyone together (vault-wide limit, role totals), for the banner
    limits: str = ""
    #: the policy's text as checked, handed to the workers through the reload marker
    policy_text: str = ""


def _check_tls(opts: ServeOptions) -> None:
    if bool(opts.certfile) != bool(opts.keyfile):
        raise ServeRefused("give both --cert and --key (a certificate without its key, or the reverse, "
                           "cannot serve TLS)")
    if not opts.tls:
        if not is_loopback(opts.host):
            raise ServeRefused(
                f"refusing to serve on {opts.host} without TLS: bearer tokens and PI would cross the "
                "network in clear text. Give --cert and --key (for a local trial, `pivault dev-cert` "
                "makes a self-signed pair), or bind to 127.0.0.1.")
        return
    for what, p in (("certificate", opts.certfile), ("key", opts.keyfile)):
        assert p is not None
        if not Path(p).is_file():
            raise ServeRefused(f"the TLS {what} file {p} does not exist")
    mode = stat.S_IMODE(os.stat(opts.keyfile).st_mode)  # type: ignore[arg-type]
    if mode & 0o077:
        raise ServeRefused(f"the TLS key file {opts.keyfile} can be read by other users "
                           f"(mode {mode:o}); make it private: chmod 600 {opts.keyfile}")
    # loaded here once, so that a bad pair stops `serve` with this line rather than each
    # worker with a traceback
    cert, key = opts.certfile, opts.keyfile
    assert cert is not None and key is not None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ServeRefused(f"the TLS certificate {cert} and key {key} do not load "
                           f"({reason}): give a PEM certificate and the private key that belongs to it"
                           " (for a local trial, `pivault dev-cert`)") from None


def preflight(opts: ServeOptions, tokens: TokenStore | None = None) -> Preflight:
    """Every check that must pass before the service listens; :class:`ServeRefused` otherwise."""
    if opts.workers < 1 or opts.workers > 64:
        raise ServeRefused("--workers is between 1 and 64")
    if not (0 < opts.port < 65536):
        raise ServeRefused("--port is between 1 and 65535")
    if not (0 < opts.head_timeout <= 300):
        raise ServeRefused("--head-timeout is more than 0 and at most 300 seconds")
    if not (1 <= opts.max_client_connections <= LIMIT_CONCURRENCY):
        raise ServeRefused(f"--max-client-connections is between 1 and {LIMIT_CONCURRENCY}")
    if not (1 <= opts.max_client_handshake_rate <= MAX_HANDSHAKE_RATE):
        raise ServeRefused(f"--max-client-handshake-rate is between 1 and {MAX_HANDSHAKE_RATE} new TLS "
                           "handshakes a second")
    # a service that answers every request 413, or times every one out, is not started
    if opts.max_body < 1:
        raise ServeRefused("--max-body is the largest request body in bytes: at least 1")
    if not (math.isfinite(opts.timeout) and opts.timeout > 0):
        raise ServeRefused("--timeout is the longest request in seconds: more than 0")
    _check_tls(opts)
    counters, counters_url = _check_counters(opts)
    policy, path, text = load_policy_text(opts)
    if policy.grants_anonymous():  # pragma: no cover - Policy refuses such files already
        raise ServeRefused("the policy grants something to an anonymous caller")
    principals: list[TokenInfo] = []
    if tokens is not None:
        principals = tokens.active_principals(policy.roles)
        if not principals:
            raise ServeRefused(
                "no principals: no active token has a role of the policy, so nobody could use the "
                "service. Create one first: pivault token create --principal NAME --role ROLE "
                "--purpose PURPOSE --expires 30d")
    return Preflight(policy, path, principals, counters, counters_url, _limits(opts), text)


def _limits(opts: ServeOptions) -> str:
    """The banner's line on what stops many principals reading together, each under its own budget.

    Without a vault-wide limit every token issued to a new principal name
    brings a budget of its own; the operator must see that at start, not
    learn it from the first ``global.distributed`` alert. A vault made before
    ``init`` wrote a default keeps running without one (nothing changes under
    it on upgrade), and is told the exact lines that give it the default.
    """
    from pivault.detect.setup import DetectSettings, default_vault_budget, vault_budget_lines
    from pivault.vault.home import CONFIG_NAME, load

    settings = DetectSettings.from_home(opts.home)
    config = Path(opts.home) / CONFIG_NAME
    parts = []
    if settings.vault:
        parts.append("vault-wide " + ", ".join(f"{k} {v}" for k, v in sorted(settings.vault.items()))
                     + f" ([detect.vault] in {config})")
    for role, budget in sorted(settings.role_totals.items()):
        parts.append(f"role {role} in all " + ", ".join(f"{k} {v}" for k, v in sorted(budget.items())))
    if settings.vault:
        return "; ".join(parts)
    population = load(opts.home).expected_population
    parts.append("no vault-wide limit: N principals may read N budgets' worth together (the "
                 f"detector alerts, nothing stops them); to set [detect.vault], add to {config} the "
                 f"lines `pivault init` writes for {population:,} residents:")
    return "; ".join(parts) + "".join("\n    " + line
                                      for line in vault_budget_lines(default_vault_budget(population)))


def _check_counters(opts: ServeOptions) -> tuple[str, str | None]:
    """Several workers must share their budget counters, or each would allow the whole budget.

    Returns the banner's description and, when nothing is configured and there are several
    workers, the URL of the counters file they will share (``<home>/run/counters.db``).
    """
    from pivault.detect.counters import SHARED_SCHEMES, counters_file
    from pivault.detect.setup import DetectSettings

    url = DetectSettings.from_home(opts.home).counters_url or ""
    chosen: str | None = None
    if opts.workers > 1 and not url:
        chosen = url = f"sqlite:///{Path(opts.home).expanduser().absolute() / 'run' / COUNTERS_FILE}"
    shared = url.startswith(SHARED_SCHEMES)
    if opts.workers > 1 and not shared:
        raise ServeRefused(
            f"refusing {opts.workers} workers with in-process budget counters: each worker would count "
            f"on its own, so every principal could read {opts.workers} times its budget. Leave [detect] "
            "counters unset (the workers then share a file in the data directory), share them in Redis "
            "for several nodes ([detect] counters = \"redis://HOST:6379/0\" in pivault.toml, or "
            "PIVAULT_REDIS_URL), or serve with --workers 1.")
    if not shared:
        return "in-process (one worker)", None
    if url.startswith("sqlite:///"):
        return f"shared by this node's workers, file {counters_file(url)}", chosen
    parsed = urlparse(url)
    host = parsed.hostname or parsed.path or "?"
    return f"shared, {parsed.scheme}://{host}{':' + str(parsed.port) if parsed.port else ''}", None


def _roles_for(policy: Policy, op: str) -> str:
    if op == "-":
        return "anyone (liveness only, no data)"
    if op == "any valid token":
        return "any valid token"
    if " and " in op:  # every one of them (a rights copy is an export that reads the record)
        needed = [o.strip() for o in op.split(" and ")]
        roles = [r.name for r in policy.roles.values() if all(o in r.operations for o in needed)]
    else:
        ops = [o.strip() for o in op.split(" or ")]
        roles = [r.name for r in policy.roles.values() if any(o in r.operations for o in ops)]
    return ("roles: " + ", ".join(roles)) if roles else "nobody (no role is granted it)"


def banner(opts: ServeOptions, pre: Preflight) -> str:
    """What the service exposes, and to whom: printed on start."""
    url = f"{opts.scheme}://{opts.host}:{opts.port}"
    lines = [
        f"pivault serve: {url}  ({'TLS' if opts.tls else 'plain HTTP, loopback only'}; "
        f"workers: {opts.workers})",
        f"policy: {pre.policy_path or 'shipped default'}",
        f"access log: {opts.access_log} (method, route, status, principal, latency; no PI)",
        f"read budgets: counters {pre.counters}; audit trail and detection on every read",
        f"read limits together: {pre.limits}",
        f"per client address and worker: {opts.max_client_connections} connections"
        + (f" (TLS handshakes in progress included), {opts.max_client_handshake_rate} new TLS handshakes "
           "a second; more are closed before their handshake" if opts.tls else "; 503 beyond"),
        "audit chain: " + ("the workers' journals chained by the node's audit chainer process"
                           if opts.workers > 1 and balanced()
                           else "the journal chained by a thread of the worker"),
        "",
        "routes:",
    ]
    for method, path, op in ROUTES:
        lines.append(f"  {method:<6} {path:<32} {_roles_for(pre.policy, op)}")
    lines += ["", "roles:"]
    for row in pre.policy.explain():
        lines.append(f"  {row['role']}: {row['operations']}; purposes: {row['purposes']}; "
                     f"sees: {row['sees']}; reveal: {row['reveal']}")
    lines += ["", f"principals with an active token ({len(pre.principals)}):"]
    for t in pre.principals:
        expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_at))
        lines.append(f"  {t.principal} (role {t.role}, token {t.token_id}, expires {expires} UTC)")
    return "\n".join(lines)


def _service_config(opts: ServeOptions) -> ServiceConfig:
    return ServiceConfig(tls=opts.tls, max_body=opts.max_body, timeout=opts.timeout,
                         access_log=opts.access_log, log_to_stderr=opts.log_to_stderr)


def _warm_up() -> None:
    """Load the division tables the address mask needs now, not on the first caller's request."""
    from pivault.model import address

    address.parse_prefix("北京市东城区")


def build_app(opts: ServeOptions, vault: Any | None = None) -> Any:
    """The app of one worker: open the vault (passphrase from the environment) and wrap it."""
    from pivault.vault import Vault

    v = vault if vault is not None else Vault.open(opts.home)
    _warm_up()
    if opts.policy_from_marker:
        # a worker of a running server, at its start or in place of one that died: the policy
        # the others run, which a reload may have changed since the server started, and the
        # file since that reload
        holder = PolicyHolder.resume(reload_marker(opts), path=policy_path_for(opts))
    else:
        policy, path = load_policy(opts)
        holder = PolicyHolder(policy, path=path, marker=reload_marker(opts))
    from pivault.detect import DetectGuard
    from pivault.detect.setup import follow_policy

    if isinstance(v.guard, DetectGuard):
        # Vault.open gave the door its watchman (audit, budgets, canaries, detector); its budgets
        # follow the live policy. The route dependency refreshes the holder once per request;
        # the watchman reads it as is.
        follow_policy(v.guard, holder.peek)
    return create_app(v, holder, config=_service_config(opts))


def app_factory() -> Any:
    """uvicorn's factory for each worker process.

    What the worker built before its first request (the app, the open vault,
    the policy, the model's tables: ~95,000 objects) lives as long as the
    worker, so it is moved out of the garbage collector's sight: a full
    collection otherwise walks all of it, 70-80 ms during which no request of
    this worker moves, every few tens of seconds under load; ~5 ms after.
    """
    import gc

    app = build_app(ServeOptions.from_env())
    gc.collect()
    gc.freeze()
    return app


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise ServeRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                           "(is another server using this port?)") from None


def run(opts: ServeOptions, *, echo: Callable[[str], None] = print) -> None:
    """Check, print the banner, and serve until interrupted."""
    import uvicorn

    from pivault.store.db import Database
    from pivault.vault import Vault
    from pivault.vault.home import load

    cfg = load(opts.home)
    with Database(cfg.existing_store_url()) as db:
        pre = preflight(opts, TokenStore(db))
    # open once here so a wrong passphrase or a missing keyring fails before listening
    Vault.open(opts.home).close()
    (Path(opts.home) / "run").mkdir(mode=0o700, exist_ok=True)
    opts.log_dir.mkdir(mode=0o700, exist_ok=True)
    # the policy checked above is the one every worker starts from, whenever it starts: a worker
    # started in place of one that died takes the last policy accepted (this one, or a reload's)
    # from the marker, never the file, which may have been edited since without a reload
    PolicyHolder.publish(reload_marker(opts), pre.policy_text)
    opts = replace(opts, policy_from_marker=True)
    socks = None
    if opts.workers > 1 and balanced():
        # a socket per worker, so that connections spread over the workers (see api/workers.py);
        # bound before the banner, so a taken port is reported before "serving" is
        try:
            socks = listen_group(opts.host, opts.port, opts.workers)
        except OSError as exc:
            raise ServeRefused(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc} "
                               "(is another server using this port?)") from None
    else:
        # uvicorn binds later, after the banner: find a taken port now, and say so in one line
        _check_port(opts.host, opts.port)
    echo(banner(opts, pre))
    os.environ[OPTIONS_ENV] = opts.to_env()
    os.environ[HANDSHAKE_ENV] = repr(opts.head_timeout)  # read by every worker's event loop
    os.environ[ADMISSION_ENV] = admission_env(AdmissionLimits(  # so is each address's share of handshakes
        per_client=opts.max_client_connections, rate=float(opts.max_client_handshake_rate)))
    if pre.counters_url:
        from pivault.detect.setup import COUNTERS_ENV

        os.environ[COUNTERS_ENV] = pre.counters_url  # the workers inherit it
    config: dict[str, Any] = {
        "app": "pivault.api.server:app_factory", "factory": True, "host": opts.host, "port": opts.port,
        "ssl_certfile": opts.certfile, "ssl_keyfile": opts.keyfile,
        "access_log": False,  # uvicorn's would print query strings; ours logs route templates
        "server_header": False, "proxy_headers": False, "log_level": "warning",
        "timeout_keep_alive": 5, "timeout_graceful_shutdown": 10, "h11_max_incomplete_event_size": MAX_HEAD,
        "limit_concurrency": LIMIT_CONCURRENCY,
        # a TLS handshake has the head's deadline too, instead of the event loop's minute, and counts
        # against its client address from the accept (api/admission.py)
        "loop": "pivault.api.handshake:deadline_loop",
        # no WebSocket: the service has no such route, and an upgrade would leave the protocol's
        # limits and the middleware's headers and token check behind
        "ws": "none",
        # each response in one write, so one TLS record and one system call (api/onewrite.py), with
        # a deadline and a size for each request head and a share of each worker per client address
        # (api/connection.py); a partial of a module's class, so it pickles into the worker processes
        "http": functools.partial(GuardedProtocol, limits=ConnectionLimits(
            head_timeout=opts.head_timeout, per_client=opts.max_client_connections)),
    }
    if socks is not None:
        from pivault.detect.setup import AUDIT_CHAIN_ENV

        os.environ[AUDIT_CHAIN_ENV] = "node"  # the workers leave their journals to the node's chainer
        try:
            serve_workers(config, socks, grace=10, chainer_home=str(opts.home))
        except RuntimeError as exc:
            raise ServeRefused(str(exc)) from None
        return
    uvicorn.run(workers=opts.workers, **config)
