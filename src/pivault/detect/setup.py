"""Build the door's watchman from a vault's configuration.

Settings live in the vault's ``pivault.toml`` (all optional)::

    [audit]
    key_dir = "/etc/pivault/audit"     # default: <keyring dir>/<vault id>.audit
    journal_dir = "/var/lib/pivault/audit-journal"   # default: <home>/run/audit-journal
    checkpoint_every = 1000            # entries
    checkpoint_seconds = 300
    anchor = "/srv/pivault-anchor/audit-anchor.jsonl"   # default: <home>/audit-anchor.jsonl
    anchor_required = false            # true: `audit verify` fails without the anchor file

    [detect]
    counters = "redis://127.0.0.1:6379/0"   # several nodes; sqlite:///PATH for one node's
                                            # workers; default: in-process, and for several
                                            # serve workers a file in <home>/run
    suspend_after = 3                       # budget breaches a day before suspension
    alerts_jsonl = "/var/log/pivault/alerts.jsonl"   # default: <home>/logs/alerts.jsonl
    webhook_url = "https://siem.example/hooks/pivault" # secret in $PIVAULT_WEBHOOK_SECRET

    [detect.vault]                          # everyone together; `pivault init` writes
    records_per_minute = 5000               # default_vault_budget(expected population)
    [detect.role_totals.officer]            # all officers together
    records_per_hour = 20000
    [detect.principals."officer-17"]        # one principal, instead of its role's budget
    records_per_day = 5000
    [detect.detector]                       # see DetectorConfig
    rate_factor = 5

``$PIVAULT_COUNTERS_URL`` overrides ``counters``, and ``$PIVAULT_REDIS_URL``
overrides both. A ``[detect.vault]`` value must be a whole number of at least 1:
the section is removed to have no vault-wide limit, never set to 0 (which would
refuse every read). ``$PIVAULT_AUDIT_CHAIN=node``, which ``pivault serve`` sets
for its workers when it runs the node's audit chainer, leaves the chaining of
their journals to that process (:mod:`pivault.audit.chainer`). Per-principal budgets of each
role come from the access policy (``[roles.R.budgets]``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pivault.audit.anchor import ANCHOR_NAME
from pivault.audit.journal import CHAIN_MODES
from pivault.audit.keys import AuditKeyError, WriterKeys, create_audit_keys, load_writer
from pivault.audit.log import AuditLog
from pivault.detect.alerts import AlertDispatcher, sinks_from_config
from pivault.detect.budgets import BudgetPolicy, Budgets
from pivault.detect.canary import CanaryRegistry
from pivault.detect.counters import Counters, counters_from_url
from pivault.detect.detector import DetectorConfig, GlobalDetector
from pivault.detect.guard import DetectGuard
from pivault.errors import ConfigError
from pivault.store.db import Database

__all__ = [
    "AUDIT_CHAIN_ENV",
    "COUNTERS_ENV",
    "VAULT_LIMIT_DIVISORS",
    "VAULT_LIMIT_FLOORS",
    "DetectSettings",
    "audit_key_dir",
    "build_guard",
    "check_vault_budget",
    "default_vault_budget",
    "follow_policy",
    "run_node_chainer",
    "vault_budget_lines",
]

log = logging.getLogger("pivault.detect")
REDIS_ENV = "PIVAULT_REDIS_URL"
#: any counters URL (memory://, sqlite:///PATH, redis://…); ``serve`` sets it for its workers
COUNTERS_ENV = "PIVAULT_COUNTERS_URL"
AUDIT_CHAIN_ENV = "PIVAULT_AUDIT_CHAIN"
WEBHOOK_SECRET_ENV = "PIVAULT_WEBHOOK_SECRET"

#: The default vault-wide read limit, as the population divided by these: 0.01 % of the residents
#: a minute, 0.2 % an hour, 2 % a day. Reading everyone then takes at least 50 days at the limit,
#: refused and alerted (``budget.vault``) each time a window is spent, while an organisation that
#: reads 0.4 % of its population on a working day (a member of staff per 1,000 residents, each
#: looking up four records) stays under every window with its busiest hour at four times the
#: average hour, its busiest minute at twelve times the average minute. docs/detect.md ("The
#: vault-wide limit") gives the reasoning.
VAULT_LIMIT_DIVISORS: dict[str, int] = {"records_per_minute": 10_000, "records_per_hour": 500,
                                      "records_per_day": 50}
#: ... and never less than these, so that a small vault still serves a few principals at the shipped
#: officer budget (30 a minute, 300 an hour, 1,000 a day): about three at once, five days' budgets a day
VAULT_LIMIT_FLOORS: dict[str, int] = {"records_per_minute": 100, "records_per_hour": 1_000,
                                      "records_per_day": 5_000}


def default_vault_budget(population: int) -> dict[str, int]:
    """The vault-wide read limit ``pivault init`` writes for a vault of ``population`` residents.

    Budgets per principal do not add up to a limit: every token issued to a new
    principal name brings its own, so without this ten tokens read ten budgets'
    worth, and enough of them the whole population. Sized from the population
    (:data:`VAULT_LIMIT_DIVISORS`) with floors (:data:`VAULT_LIMIT_FLOORS`).
    """
    return {key: max(VAULT_LIMIT_FLOORS[key], population // share)
            for key, share in VAULT_LIMIT_DIVISORS.items()}


def check_vault_budget(table: Mapping[str, Any]) -> dict[str, int]:
    """The ``[detect.vault]`` table, refused in one line naming the key if a value cannot be a limit.

    Stricter than the budgets of a principal: a 0 there shuts one caller out,
    here it would refuse every read of everyone, and a fraction would be cut to
    a whole number silently. No limit is said by leaving the section out.
    """
    from pivault.detect.budgets import BUDGET_KEYS

    out: dict[str, int] = {}
    for key, value in table.items():
        if key not in BUDGET_KEYS:
            raise ConfigError(f"[detect.vault] has an unknown setting {key!r}; it takes "
                              f"{', '.join(BUDGET_KEYS)}", code="home.config")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"[detect.vault] {key} must be a whole number of records, e.g. "
                              f"{key} = 1000; fix the line in pivault.toml", code="home.config")
        if value < 1:
            raise ConfigError(f"[detect.vault] {key} must be at least 1 (0 or less would refuse every "
                              "read); to have no vault-wide limit, delete the line", code="home.config")
        out[key] = value
    return out


def vault_budget_lines(budget: Mapping[str, int]) -> list[str]:
    """``budget`` as the lines of pivault.toml that set it (init writes them, the banner prints them)."""
    return ["[detect.vault]", *(f"{key} = {value}" for key, value in budget.items())]


@dataclass
class DetectSettings:
    """The ``[audit]`` and ``[detect]`` settings of a vault."""

    counters_url: str | None = None
    suspend_after: int = 3
    vault: dict[str, Any] = field(default_factory=dict)
    role_totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_jsonl: str | None = None
    webhook_url: str | None = None
    detector: dict[str, Any] = field(default_factory=dict)
    audit_key_dir: str | None = None
    journal_dir: str | None = None
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 300.0
    #: the file each checkpoint is appended to, outside the store (:mod:`pivault.audit.anchor`);
    #: None without a vault home (library use): checkpoints are kept in the store only
    anchor: str | None = None
    #: `audit verify` fails when the anchor file is missing, instead of saying it could not check
    anchor_required: bool = False
    #: who chains this process's audit journal: its own thread, or the node's chainer process
    journal_chain: str = "thread"

    @classmethod
    def from_home(cls, home: str | os.PathLike[str] | None) -> DetectSettings:
        out = cls()
        if home is not None:
            path = Path(home) / "pivault.toml"
            try:
                with open(path, "rb") as fh:
                    doc = tomllib.load(fh)
            except FileNotFoundError:
                doc = {}
            except (OSError, tomllib.TOMLDecodeError) as exc:
                from pivault.vault.home import unreadable

                raise unreadable(path, exc) from None
            out = cls.from_mapping(doc.get("audit", {}), doc.get("detect", {}))
            if out.alerts_jsonl is None:
                out.alerts_jsonl = str(Path(home) / "logs" / "alerts.jsonl")
            if out.journal_dir is None:
                out.journal_dir = str(Path(home) / "run" / "audit-journal")
            # a relative path is the home's: every process of the vault must name the same file
            configured = Path(out.anchor or ANCHOR_NAME).expanduser()
            out.anchor = str(Path(home).expanduser().absolute() / configured)
        env = os.environ.get(REDIS_ENV) or os.environ.get(COUNTERS_ENV)
        if env:
            out.counters_url = env
        chain = os.environ.get(AUDIT_CHAIN_ENV)
        if chain:
            if chain not in CHAIN_MODES:
                raise ConfigError(f"${AUDIT_CHAIN_ENV} is one of {', '.join(CHAIN_MODES)}",
                                  code="home.config")
            out.journal_chain = chain
        return out

    @classmethod
    def from_mapping(cls, audit: Mapping[str, Any], detect: Mapping[str, Any]) -> DetectSettings:
        from pivault.vault.home import SETTINGS  # the settings pivault.toml may hold, in one place

        for name, table in (("audit", audit), ("detect", detect)):
            unknown = sorted(set(table) - set(SETTINGS[name]))
            if unknown:
                raise ConfigError(f"[{name}] has an unknown setting {unknown[0]!r}", code="home.config")
        detector_names = {f.name for f in fields(DetectorConfig)} - {"extra"}
        det = dict(detect.get("detector", {}))
        bad = sorted(set(det) - detector_names)
        if bad:
            raise ConfigError(f"[detect.detector] has an unknown setting {bad[0]!r}", code="home.config")
        return cls(
            counters_url=detect.get("counters"), suspend_after=int(detect.get("suspend_after", 3)),
            vault=check_vault_budget(_table(detect.get("vault", {}), "[detect] vault")),
            role_totals=dict(detect.get("role_totals", {})),
            principals=dict(detect.get("principals", {})), alerts_jsonl=detect.get("alerts_jsonl"),
            webhook_url=detect.get("webhook_url"), detector=det,
            audit_key_dir=audit.get("key_dir"), journal_dir=audit.get("journal_dir"),
            checkpoint_every=int(audit.get("checkpoint_every", 1000)),
            checkpoint_seconds=float(audit.get("checkpoint_seconds", 300.0)),
            anchor=audit.get("anchor"), anchor_required=bool(audit.get("anchor_required", False)))


def _table(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a table", code="home.config")
    return value


def audit_key_dir(keyring_path: str | os.PathLike[str], vault_id: str,
                  settings: DetectSettings | None = None) -> Path:
    """Where the audit keys of a vault live: beside its keyring, never in the data directory."""
    if settings is not None and settings.audit_key_dir:
        return Path(settings.audit_key_dir).expanduser().absolute()
    return Path(keyring_path).expanduser().absolute().parent / f"{vault_id}.audit"


class _PolicyBudgets:
    """The budget policy of the current access policy, rebuilt only when the policy changes."""

    def __init__(self, policy: Callable[[], Any], settings: DetectSettings) -> None:
        self._policy = policy
        self._settings = settings
        self._seen: Any = None
        self._budgets: BudgetPolicy | None = None

    def __call__(self) -> BudgetPolicy:
        current = self._policy()
        if current is not self._seen or self._budgets is None:
            s = self._settings
            self._budgets = BudgetPolicy.from_policy(current, principals=s.principals,
                                                     role_totals=s.role_totals, vault=s.vault,
                                                     suspend_after=s.suspend_after)
            self._seen = current
        return self._budgets


def build_guard(db: Database, keyring: Any, *, keyring_path: str | os.PathLike[str],
                home: str | os.PathLike[str] | None = None, settings: DetectSettings | None = None,
                policy: Callable[[], Any] | None = None, suspend: Callable[[str, str], object] | None = None,
                counters: Counters | None = None, inner: Any = None,
                create_keys: bool = True) -> DetectGuard:
    """A :class:`DetectGuard` for one worker of the vault in ``home``.

    ``policy`` returns the current access policy (the API passes its
    reloadable holder); by default the vault's policy file or the shipped
    default. ``suspend`` defaults to the token store's. Audit keys are
    created beside the keyring on first use (``create_keys``), with a
    warning to move the verifier key to the auditor.
    """
    settings = settings or DetectSettings.from_home(home)
    audit_log = _audit_log(db, keyring, keyring_path, home, settings, create_keys, journal=True)
    counters = counters or counters_from_url(settings.counters_url, namespace=keyring.vault_id)
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "").encode() or None
    if settings.alerts_jsonl:
        Path(settings.alerts_jsonl).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    alerts = AlertDispatcher(sinks_from_config(db, jsonl=settings.alerts_jsonl,
                                               webhook_url=settings.webhook_url, webhook_secret=secret),
                             claim=counters.claim)
    if policy is None:
        from pivault.policy.policy import Policy

        fixed = _home_policy(home) if home is not None else Policy.default()
        policy = lambda: fixed  # noqa: E731 - a constant policy
    if suspend is None:
        from pivault.policy.tokens import TokenStore

        suspend = TokenStore(db).suspend
    detector = GlobalDetector(counters, alerts, DetectorConfig(**settings.detector))
    detector.start()  # the vault-wide rules run off the request path
    return DetectGuard(
        audit_log, budgets=Budgets(_PolicyBudgets(policy, settings), counters), alerts=alerts,
        canaries=CanaryRegistry(db, keyring), detector=detector, suspend=suspend, inner=inner)


def run_node_chainer(home: str | os.PathLike[str], stop: threading.Event) -> None:
    """Chain the audit journals of every worker of the vault in ``home`` until ``stop`` is set.

    Opens only what chaining needs: the store, the keyring (the chain head's key
    is kept encrypted under it) and the writer's audit keys (the checkpoints'
    signatures) — no budgets, no detector, no record is read.
    """
    from pivault.audit.chainer import NodeChainer
    from pivault.crypto import Keyring
    from pivault.crypto.providers import provider_for
    from pivault.vault.home import load

    cfg = load(home)
    keyring = Keyring.open(cfg.keyring_path, provider_for(Keyring.peek(cfg.keyring_path)["provider"]))
    settings = DetectSettings.from_home(cfg.home)
    assert settings.journal_dir is not None
    with Database(cfg.existing_store_url()) as db:
        from pivault.keys import seen

        seen.check(db, keyring)  # it writes the chain head under the keyring: never an older copy
        audit_log = _audit_log(db, keyring, cfg.keyring_path, cfg.home, settings, True, journal=False)
        NodeChainer(audit_log, settings.journal_dir).run(stop)


def _audit_log(db: Database, keyring: Any, keyring_path: str | os.PathLike[str],
               home: str | os.PathLike[str] | None, settings: DetectSettings, create_keys: bool, *,
               journal: bool) -> AuditLog:
    """The vault's audit log as its settings say; ``journal``: written ahead to this process's journal."""
    writer = _writer_keys(audit_key_dir(keyring_path, keyring.vault_id, settings), keyring, home, create_keys)
    return AuditLog(db, keyring, writer, checkpoint_every=settings.checkpoint_every,
                    checkpoint_seconds=settings.checkpoint_seconds,
                    journal_dir=settings.journal_dir if journal else None,
                    journal_chain=settings.journal_chain, anchor=settings.anchor)


def follow_policy(guard: DetectGuard, policy: Callable[[], Any]) -> None:
    """Take budgets from ``policy`` (e.g. the API's reloadable holder) from now on."""
    if guard.budgets is not None:
        source = guard.budgets._policy
        if isinstance(source, _PolicyBudgets):
            source._policy = policy
            source._seen = None


def _writer_keys(key_dir: Path, keyring: Any, home: str | os.PathLike[str] | None,
                 create: bool) -> WriterKeys:
    """Load the writer's audit keys; make them on first use (several workers may race to)."""
    try:
        return load_writer(key_dir, keyring)
    except AuditKeyError as exc:
        if exc.code != "audit.keys.missing" or not create:
            raise
    try:
        create_audit_keys(key_dir, keyring, data_dir=home)
        log.warning("created audit keys in %s; move audit-verifier.key to the auditor", key_dir)
    except AuditKeyError as exc:
        if exc.code != "audit.keys.exists":
            raise
    deadline = time.monotonic() + 5.0
    while True:  # another worker may still be writing its three files
        try:
            return load_writer(key_dir, keyring)
        except AuditKeyError as exc:
            if exc.code != "audit.keys.missing" or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _home_policy(home: str | os.PathLike[str]) -> Any:
    from pivault.policy.policy import Policy
    from pivault.vault.home import load

    path = load(home).policy_path
    return Policy.load(path) if path else Policy.default()
