"""Service commands: serve, dev-cert, token create/list/revoke, policy check, demo.

A thin skin over :mod:`pivault.api` and :mod:`pivault.policy`. Errors are one
line on stderr (``error[code]: message``), never a traceback, never a value
from a record. Tokens are printed once, on stdout alone (so
``pivault token create … > file`` captures exactly the token), or written to a
0600 file with ``--out``.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from pivault.cli.common import HomeOpt
from pivault.cli.common import err as _err
from pivault.cli.common import run_cli as _cli
from pivault.errors import ConfigError
from pivault.policy import Policy
from pivault.policy.tokens import TokenStore

__all__ = [
    "DEMO_SEED",
    "app",
    "demo",
    "dev_cert",
    "policy_app",
    "policy_check",
    "register",
    "serve",
    "token_app",
    "token_create",
    "token_list",
    "token_resume",
    "token_revoke",
]

P = ParamSpec("P")
R = TypeVar("R")

#: the seed of the demo's synthetic population (so the curl example's resident exists)
DEMO_SEED = 20220701
DEMO_PURPOSES: dict[str, str] = {
    "officer": "identity_verification", "registrar": "registration",
    "dpo": "data_subject_request", "admin": "administration",
}



def _home(home: Path | None) -> Path:
    from pivault.vault.home import resolve_home

    return resolve_home(home)


def _policy_for(home: Path) -> Policy:
    from pivault.vault.home import load

    path = load(home).policy_path
    return Policy.load(path) if path else Policy.default()


def _tokens(home: Path) -> TokenStore:
    from pivault.store.db import Database
    from pivault.store.migrations import require_current
    from pivault.vault.home import load

    db = Database(load(home).existing_store_url())
    try:
        require_current(db)  # `pivault migrate` upgrades a vault, after its backup; not a token command
    except BaseException:
        db.close()
        raise
    return TokenStore(db)


@contextmanager
def _audited_tokens(home: Path) -> Iterator[tuple[TokenStore, Callable[[str, str], None]]]:
    """The token store of an opened vault, and a recorder for the audit trail.

    Token changes at the command line are recorded like those made through
    the API: the vault is opened (so the passphrase is needed), and each change
    and its audit entry commit in one transaction, so neither stands alone.
    """
    from pivault.policy.context import local_operator
    from pivault.vault import Vault

    with Vault.open(home) as vault:
        ctx = local_operator("administration")

        def record(operation: str, token_id: str) -> None:
            vault.guard.audit(ctx, operation, [token_id], "ok")

        with vault.db.transaction():
            yield TokenStore(vault.db), record


def _check_token_out(path: Path, force: bool) -> None:
    """Refuse a ``--out`` the token cannot go to, before the token exists.

    An existing file is not replaced without ``--force`` (the token in it would
    stay active with nobody holding it), and a missing directory is not made (a
    mistyped path would put a secret where nobody looks).
    """
    if path.is_dir():
        raise ConfigError(f"{path.name} is a directory; --out names the file to write the token to",
                          code="token.out")
    if (path.exists() or path.is_symlink()) and not force:
        raise ConfigError(f"{path.name} already exists; refusing to overwrite it", code="token.exists",
                          hint="choose a new file, or pass --force (then revoke the token it held)")
    if not path.parent.is_dir():
        raise ConfigError(f"the directory of {path.name} does not exist; create it first (mode 0700)",
                          code="token.out")


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- serve -----------------------------------------------------------------------------------
@_cli
def serve(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; not loopback needs TLS.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8443,
    workers: Annotated[int, typer.Option(
        "--workers", help="Worker processes, one per core; several share their read budgets in a file "
                          "of the vault (<home>/run/counters.db) or in the configured Redis.")] = 1,
    cert: Annotated[Path | None, typer.Option("--cert", help="TLS certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="TLS private key (PEM, mode 0600).")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Policy file (default: the vault's, else the shipped default).")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body, bytes.")] = 1024 * 1024,
    timeout: Annotated[float, typer.Option("--timeout", help="Longest request, seconds.")] = 30.0,
    head_timeout: Annotated[float, typer.Option(
        "--head-timeout", help="Longest wait for a request's line and headers, seconds (408 after).")] = 10.0,
    max_client_connections: Annotated[int, typer.Option(
        "--max-client-connections", help="Connections one client address may hold open to each worker, "
                                         "TLS handshakes in progress included (beyond: 503, or over TLS "
                                         "closed before the handshake).")] = 256,
    max_client_handshake_rate: Annotated[int, typer.Option(
        "--max-client-handshake-rate", help="New TLS handshakes one client address may start at each "
                                            "worker per second, and at once (beyond: closed before the "
                                            "handshake).")] = 256,
) -> None:
    """Serve the vault over HTTPS to token holders, as the policy allows. Refuses to start unsafe."""
    from pivault.api.server import ServeOptions, run
    from pivault.crypto import passphrase_from_env_or_prompt

    h = _home(home)
    # the worker processes open the vault themselves: they inherit the passphrase
    os.environ["PIVAULT_PASSPHRASE"] = passphrase_from_env_or_prompt()
    opts = ServeOptions(home=str(h), host=host, port=port, workers=workers,
                        certfile=str(cert) if cert else None, keyfile=str(key) if key else None,
                        policy=str(policy) if policy else None, max_body=max_body, timeout=timeout,
                        head_timeout=head_timeout, max_client_connections=max_client_connections,
                        max_client_handshake_rate=max_client_handshake_rate)
    run(opts, echo=typer.echo)


@_cli
def dev_cert(
    home: HomeOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory (default <home>/tls).")] = None,
    host: Annotated[list[str] | None, typer.Option(
        "--host", help="Name or address the certificate is for (repeat; default localhost, 127.0.0.1, ::1).")
    ] = None,
    days: Annotated[int, typer.Option("--days")] = 30,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing pair.")] = False,
) -> None:
    """Make a self-signed certificate and key (0600) for trying the service on this machine."""
    from pivault.api.tls import DEFAULT_HOSTS, make_dev_cert

    d = out if out is not None else _home(home) / "tls"
    c = make_dev_cert(d, hosts=tuple(host) if host else DEFAULT_HOSTS, days=days, overwrite=force)
    typer.echo(f"certificate: {c.certfile}\nkey:         {c.keyfile} (mode 0600)\n"
               f"valid until: {c.not_after:%Y-%m-%d} UTC; for local use only — clients pass "
               f"--cacert {c.certfile}")


# -- tokens --------------------------------------------------------------------------------------
token_app = typer.Typer(help="Bearer tokens: create (shown once), list, revoke, resume.",
                        no_args_is_help=True)


@token_app.command("create")
@_cli
def token_create(
    principal: Annotated[str, typer.Option("--principal", help="Who holds the token (a person or service).")],
    role: Annotated[str, typer.Option("--role", help="A role of the policy.")],
    purpose: Annotated[list[str] | None, typer.Option(
        "--purpose", help="Purpose the holder may state (repeat; default: all of the role's).")] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime: 30d, 12h, 90m …")] = "30d",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the token to this new file (0600) in an existing directory.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --out file (the token it held stays active: revoke it).")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Create a token: 256 random bits, stored only as a hash, printed once."""
    from pivault.crypto._atomic import write_private
    from pivault.policy.context import local_principal
    from pivault.policy.tokens import parse_duration

    h = _home(home)
    pol = _policy_for(h)
    r = pol.role(role)
    if r is None:
        raise ConfigError(f"no role {role!r} in the policy; roles: {', '.join(pol.roles)}", code="token.role")
    purposes = purpose or list(r.purposes)
    bad = [p for p in purposes if p not in r.purposes]
    if bad:
        raise ConfigError(f"role {role!r} may state only: {', '.join(r.purposes)}", code="token.purpose")
    ttl = parse_duration(expires)
    if out is not None:
        _check_token_out(out, force)
    # a file replaced with --force is replaced only once the token is committed: until then the new
    # token waits beside it, so a failed commit leaves the old file (and its holder) as they were
    target = out.with_name(f".{out.name}.{os.getpid()}.new") if out is not None and force else out
    written = False
    try:
        with _audited_tokens(h) as (store, record):
            # the issuer is the account running this, as the export rule compares it
            info, token = store.create(principal, role, purposes, ttl_seconds=ttl,
                                       created_by=local_principal())
            if target is not None:
                # inside the transaction: if the file cannot be written, the token is rolled
                # back with it, so no active token is left that nobody holds
                write_private(target, (token + "\n").encode(), overwrite=force)
                written = True
            record("token.create", info.token_id)
        if out is not None and target is not None and target != out:
            os.replace(target, out)
    except BaseException:
        if target is not None and (written or target != out):
            target.unlink(missing_ok=True)  # holds a token that was never committed
        raise
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.expires_at))
    if out is not None:
        _err(f"token {info.token_id} for {principal} (role {role}) written to {out} (0600), "
             f"expires {when} UTC")
    else:
        _err(f"token {info.token_id} for {principal} (role {role}), expires {when} UTC. "
             "It is shown once and stored only as a hash:")
        typer.echo(token)


@token_app.command("list")
@_cli
def token_list(
    home: HomeOpt = None,
    all_: Annotated[bool, typer.Option(
        "--all", help="Include expired, revoked and suspended tokens.")] = False,
) -> None:
    """List tokens (ids, principals, roles, states — never a token)."""
    from rich.console import Console
    from rich.table import Table

    store = _tokens(_home(home))
    try:
        listed = store.list(include_inactive=all_)
    finally:
        store.db.close()
    table = Table("token id", "principal", "role", "purposes", "expires (UTC)", "state")
    table.columns[0].no_wrap = True
    for t in listed:
        state = t.state() + (f" ({t.suspended_reason})" if t.suspended_reason else "")
        table.add_row(t.token_id, t.principal, t.role, ", ".join(t.purposes),
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_at)), state)
    Console(width=160).print(table)


@token_app.command("revoke")
@_cli
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (pv_<token_id>_…).")],
    home: HomeOpt = None,
) -> None:
    """Revoke a token: refused from the next request on, by every worker."""
    if token_id.startswith("pv_"):
        token_id = token_id.split("_")[1]
    with _audited_tokens(_home(home)) as (store, record):
        if not store.revoke(token_id):
            raise ConfigError("no such token, or it is already revoked", code="token.not_found")
        record("token.revoke", token_id)
    typer.echo(f"revoked {token_id}")


@token_app.command("resume")
@_cli
def token_resume(
    token_id: Annotated[str, typer.Argument(help="The id of a suspended token.")],
    home: HomeOpt = None,
) -> None:
    """Lift a suspension (set by the detector) after the operator has looked into it."""
    with _audited_tokens(_home(home)) as (store, record):
        if not store.resume(token_id):
            raise ConfigError("no suspended token with this id (revoked tokens stay revoked)",
                              code="token.not_found")
        record("token.resume", token_id)
    typer.echo(f"resumed {token_id}")


# -- policy ------------------------------------------------------------------------------------
policy_app = typer.Typer(help="The access policy: check and explain.", no_args_is_help=True)


@policy_app.command("check")
@_cli
def policy_check(
    file: Annotated[Path | None, typer.Argument(help="Policy file (default: the shipped policy).")] = None,
    show_default: Annotated[bool, typer.Option(
        "--print-default", help="Print the shipped policy file.")] = False,
) -> None:
    """Validate a policy file and explain, per role, what it may do, see and reveal."""
    from rich.console import Console
    from rich.table import Table

    if show_default:
        typer.echo(Policy.default_text(), nl=False)
        return
    pol = Policy.load(file) if file is not None else Policy.default()
    table = Table("role", "operations", "purposes", "sees", "may reveal (field: purposes)", "writes",
                  "budgets", title=f"policy {pol.source}: valid", show_lines=True)
    for row in pol.explain():
        table.add_row(row["role"], row["operations"], row["purposes"], row["sees"], row["reveal"],
                      row["writes"], row["budgets"])
    Console(width=160).print(table)
    typer.echo("No role is granted to callers without a token; only GET /healthz is open.")
    from pivault.policy.inference import THRESHOLD

    # what each role could still narrow an ID number to, so an operator sees the margin, not only a pass
    for e in pol.id_exposures():
        typer.echo(f"ID numbers, {e.role} for {e.purpose}: {' + '.join(e.sources) or 'nothing'} leave "
                   f"{e.candidates:,} candidates for the worst-placed resident (refused below {THRESHOLD:,})")


# -- demo ----------------------------------------------------------------------------------------
@_cli
def demo(
    home: Annotated[Path, typer.Option("--home", help="Demo vault home.")] = Path(".pivault-demo"),
    count: Annotated[int, typer.Option("--count", help="Synthetic residents to import.")] = 100_000,
    port: Annotated[int, typer.Option("--port")] = 8443,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Default: one per core, at most 2 (they share their budget counters in a "
                          "file of the demo vault, or in Redis with PIVAULT_REDIS_URL).")] = None,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Prepare everything, do not serve.")] = False,
) -> None:
    """A vault of synthetic residents, served on loopback over HTTPS, with a token per role.

    The passphrase comes from PIVAULT_PASSPHRASE, else a generated one is
    kept in <home>/secrets/passphrase (0600) — for the demo only: a real
    vault's passphrase lives with its custodians, not beside the data.
    """
    from pivault.api.server import ServeOptions, run
    from pivault.api.tls import make_dev_cert
    from pivault.policy.context import local_operator
    from pivault.synth import generate, write_population
    from pivault.vault import Vault
    from pivault.vault.home import CONFIG_NAME, init

    h = home.expanduser().absolute()
    secret_file = h / "secrets" / "passphrase"
    passphrase = os.environ.get("PIVAULT_PASSPHRASE")
    if not (h / CONFIG_NAME).exists():
        if not passphrase:
            passphrase = secrets.token_urlsafe(24)
            _write_secret(secret_file, passphrase + "\n")
            typer.echo(f"generated a passphrase for the demo vault: {secret_file} (0600)")
        # the keyring is sized for the population it will hold (blind-index anonymity depends on it)
        cfg = init(h, passphrase=passphrase, expected_population=max(count, 1000))
        typer.echo(f"created the vault {h}")
        from pivault.cli.vault_cmds import read_limit_line

        typer.echo(read_limit_line(cfg))
    elif not passphrase:
        if not secret_file.exists():
            raise ConfigError(f"{h} exists but its passphrase is neither in PIVAULT_PASSPHRASE nor in "
                              f"{secret_file}", code="demo.passphrase")
        passphrase = secret_file.read_text(encoding="utf-8").strip()
    os.environ["PIVAULT_PASSPHRASE"] = passphrase

    with Vault.open(h, passphrase=passphrase) as vault:
        have = vault.store.count()
        if have < count:
            src = h / "import" / "demo-population.csv"
            src.parent.mkdir(mode=0o700, exist_ok=True)
            typer.echo(f"writing {count:,} synthetic residents (seed {DEMO_SEED}) …")
            write_population(src, count, DEMO_SEED)
            typer.echo("importing them (encrypting every field) …")
            started = time.perf_counter()
            summary = vault.import_files([src], ctx=local_operator("import"))
            typer.echo(f"imported {summary.imported:,} (rejected {summary.rejected}, duplicates "
                       f"{summary.duplicates}) in {time.perf_counter() - started:.0f} s")
            # the plaintext file has served its purpose: the vault is now the only copy
            for p in (src, src.with_name(src.name + ".labels.jsonl")):
                p.unlink(missing_ok=True)
        store = TokenStore(vault.db)
        for t in store.list(include_inactive=False):
            if t.principal.startswith("demo-"):
                store.revoke(t.token_id)
        token_files: dict[str, Path] = {}
        pol = _policy_for(h)
        for role in DEMO_PURPOSES:
            r = pol.role(role)
            if r is None:
                continue
            _, tok = store.create(f"demo-{role}", role, r.purposes, ttl_seconds=7 * 86400,
                                  created_by="demo")
            token_files[role] = h / "tokens" / f"{role}.token"
            _write_secret(token_files[role], tok + "\n")

    tls = h / "tls"
    if not (tls / "cert.pem").exists() or not (tls / "key.pem").exists():
        make_dev_cert(tls, overwrite=True)
    first = next(iter(generate(1, DEMO_SEED)))
    officer = token_files.get("officer", h / "tokens" / "officer.token")
    example = (
        f"curl --cacert {tls / 'cert.pem'} \\\n"
        f"  -H \"Authorization: Bearer $(cat {officer})\" \\\n"
        f"  -H \"X-Purpose: {DEMO_PURPOSES['officer']}\" -H \"Content-Type: application/json\" \\\n"
        f"  -d '{{\"id_number\": \"{first['id_number']}\"}}' \\\n"
        f"  https://127.0.0.1:{port}/v1/residents/lookup"
    )
    typer.echo("\ntokens (mode 0600): " + ", ".join(str(p) for p in token_files.values()))
    if no_serve:
        # nothing listens: the example is for once the vault is served
        typer.echo("ready, not served (--no-serve): run `pivault demo` without it to serve the vault, then "
                   "try (a synthetic resident; the officer sees masked values):\n")
        typer.echo(example + "\n")
        return
    typer.echo("try, from another terminal (a synthetic resident; the officer sees masked values):\n")
    typer.echo(example + "\n")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    opts = ServeOptions(home=str(h), host="127.0.0.1", port=port, workers=workers,
                        certfile=str(tls / "cert.pem"), keyfile=str(tls / "key.pem"))
    run(opts, echo=typer.echo)


# -- wiring ----------------------------------------------------------------------------------------
def register(target: typer.Typer) -> None:
    """Attach these commands to the main ``pivault`` app."""
    target.command("serve")(serve)
    target.command("dev-cert")(dev_cert)
    target.command("demo")(demo)
    target.add_typer(token_app, name="token")
    target.add_typer(policy_app, name="policy")


app = typer.Typer(name="pivault-serve", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":  # pragma: no cover - python -m pivault.cli.serve_cmds
    app()
