"""The access policy: which role may do what, see which fields, masked how, and why.

The operator edits one TOML file; pivault validates it strictly (an unknown
operation, field, mask or purpose is an error, never ignored) because a typo in
a security policy must not silently widen or narrow access. The format::

    [policy]
    version = 1

    [roles.officer]
    description = "looks up one resident at a time, sees masked values"
    operations = ["lookup", "read"]
    purposes = ["identity_verification", "case_investigation"]

    [roles.officer.fields]          # the fields the role sees, and their mask
    name = "mask"                   # the field's default display mask
    id_number = "id_number_ends"    # a named mask: first and last character
    gender = "none"                 # shown in full

    [roles.officer.reveal]          # full values on request, per field and purpose
    mobile = ["case_investigation"]

    [roles.officer.budgets]         # read limits, enforced by the budget engine
    records_per_minute = 30

A field a role does not list is never returned to it. ``record_id`` is opaque
(not PI) and always returned. A role that could rebuild a resident ID number
from what it sees, for a purpose under which it may not reveal the number, makes
the policy invalid (:mod:`pivault.policy.inference`). Nothing is granted to a caller without a token:
a role named like an anonymous caller (``anonymous``, ``*`` …) that grants
anything makes the policy invalid.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pivault.errors import ConfigError, PivaultError
from pivault.model.masks import MASKS, mask_field, mask_full
from pivault.policy import inference
from pivault.policy.context import AccessContext

__all__ = [
    "ANONYMOUS_NAMES",
    "MASK_NAMES",
    "OPERATIONS",
    "PI_OPERATIONS",
    "RECORD_FIELDS",
    "WRITABLE_FIELDS",
    "AccessDenied",
    "Decision",
    "Policy",
    "PolicyError",
    "Role",
    "apply_mask",
]

#: every operation a role can be granted
OPERATIONS: tuple[str, ...] = ("lookup", "read", "create", "update", "erase", "export", "audit", "admin")
#: operations that touch a resident's PI, and so need a stated purpose
PI_OPERATIONS: frozenset[str] = frozenset({"lookup", "read", "create", "update", "erase", "export"})
#: the fields of a resident's view a role may be shown (``record_id`` is always shown)
RECORD_FIELDS: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes",
                                  "gender", "birth_date", "region_code")
#: the fields a caller writes (the rest derive from the ID number)
WRITABLE_FIELDS: tuple[str, ...] = ("name", "id_number", "mobile", "address", "notes")
#: ``none`` shows the value, ``full`` hides all of it, ``mask`` is the field's
#: default display mask, the others are the named masks of pivault.model.masks
MASK_NAMES: tuple[str, ...] = ("none", "full", "mask", *sorted(MASKS))
#: role names that would mean "a caller without a token"
ANONYMOUS_NAMES: frozenset[str] = frozenset({"anonymous", "anon", "*", "any", "anyone", "everyone",
                                             "public", "guest", "unauthenticated", "nobody", ""})
#: budget keys the budget engine understands (values are passed through, type-checked only)
BUDGET_KEYS: frozenset[str] = frozenset({"records_per_minute", "records_per_hour", "records_per_day",
                                         "misses_per_hour", "distinct_per_day", "changes_per_day"})

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_MAX_POLICY_BYTES = 1024 * 1024


class PolicyError(ConfigError):
    """The policy file is invalid; the message names the place and the rule."""

    code = "policy.invalid"


class AccessDenied(PivaultError, PermissionError):
    """The policy refuses this request (HTTP 403). The message names the rule, not the data."""

    code = "policy.denied"


def apply_mask(mask: str, fieldname: str, value: str) -> str:
    """``value`` under the named mask (one of :data:`MASK_NAMES`)."""
    if mask == "none":
        return value
    if mask == "full":
        return mask_full(value)
    if mask == "mask":
        return mask_field(fieldname, value) or ""
    return MASKS[mask](value)


@dataclass(frozen=True, slots=True)
class Role:
    """One role as the policy file defines it."""

    name: str
    description: str
    operations: frozenset[str]
    purposes: tuple[str, ...]
    #: visible field -> mask name
    fields: Mapping[str, str]
    #: field -> purposes under which the full value may be revealed
    reveal: Mapping[str, frozenset[str]]
    #: fields the role may write on create/update
    writable: frozenset[str]
    #: passed through to the budget engine
    budgets: Mapping[str, int | float] = field(default_factory=dict)
    #: operation -> the only purposes it may be done for (an operation not listed: any of the role's)
    operation_purposes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def grants_anything(self) -> bool:
        return bool(self.operations or self.fields or self.reveal)

    def revealable(self, purpose: str) -> frozenset[str]:
        return frozenset(f for f, ps in self.reveal.items() if purpose in ps)


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one operation: allowed or not, and what the caller sees.

    ``fields`` maps each visible field to the mask to apply (``none`` where the
    full value is revealed); :meth:`apply` turns a decrypted record into what
    may leave the vault.
    """

    allowed: bool
    operation: str
    role: str
    purpose: str
    fields: Mapping[str, str] = field(default_factory=dict)
    revealed: frozenset[str] = frozenset()
    reason: str = ""
    code: str = "policy.denied"

    def check(self) -> Decision:
        """Raise :class:`AccessDenied` unless allowed; return self so calls chain."""
        if not self.allowed:
            raise AccessDenied(self.reason, code=self.code)
        return self

    def apply(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record as this decision allows it to be shown: hidden fields dropped, masks applied."""
        out: dict[str, Any] = {}
        if "record_id" in record:
            out["record_id"] = record["record_id"]
        for fname, mask in self.fields.items():
            if fname not in record:
                continue
            value = record[fname]
            if value is None or value == "":
                out[fname] = value
            else:
                out[fname] = apply_mask(mask, fname, str(value))
        return out


def _deny(role: str, operation: str, purpose: str, code: str, reason: str) -> Decision:
    return Decision(False, operation, role, purpose, reason=reason, code=code)


def _strs(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return list(value)


def _only_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = set(allowed)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _parse_budgets(raw: object, where: str) -> dict[str, int | float]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    out: dict[str, int | float] = {}
    for key, value in raw.items():
        if key not in BUDGET_KEYS:
            raise PolicyError(f"{where}: unknown budget {key!r}; known: {', '.join(sorted(BUDGET_KEYS))}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                isinstance(value, float) and not math.isfinite(value)):
            raise PolicyError(f"{where}.{key} must be a non-negative number")
        out[key] = value
    return out


def _purpose_table(raw: object, where: str, what: str, keys: Collection[str], purposes: Sequence[str],
                   not_a_key: Callable[[str], str]) -> dict[str, list[str]]:
    """A table of ``what = [purposes]`` (a role's reveal, its operation_purposes): each key one of
    ``keys``, each purpose one of the role's."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table of {what} = [purposes]")
    out: dict[str, list[str]] = {}
    for key, ps in raw.items():
        if key not in keys:
            raise PolicyError(f"{where}.{key}: {not_a_key(key)}")
        plist = _strs(ps, f"{where}.{key}")
        for p in plist:
            if p not in purposes:
                raise PolicyError(f"{where}.{key}: purpose {p!r} is not one of the role's purposes")
        out[key] = plist
    return out


def _parse_role(name: str, raw: object) -> Role:
    where = f"roles.{name}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    if name.strip().lower() in ANONYMOUS_NAMES:
        raise PolicyError(f"{where}: a role named {name!r} would stand for callers without a token; "
                          "pivault grants nothing to anonymous callers (only GET /healthz is open)")
    if not _NAME.fullmatch(name):
        raise PolicyError(f"{where}: role names are lower-case letters, digits and _ (max 40)")
    _only_keys(raw, ("description", "operations", "purposes", "operation_purposes", "fields", "reveal",
                     "writable", "budgets"), where)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise PolicyError(f"{where}.description must be a string")
    ops = _strs(raw.get("operations", []), f"{where}.operations")
    for op in ops:
        if op not in OPERATIONS:
            raise PolicyError(f"{where}.operations: unknown operation {op!r}; "
                              f"known: {', '.join(OPERATIONS)}")
    if len(set(ops)) != len(ops):
        raise PolicyError(f"{where}.operations lists an operation twice")
    purposes = _strs(raw.get("purposes", []), f"{where}.purposes")
    if not purposes:
        raise PolicyError(f"{where}.purposes is empty: every role states why it acts "
                          "(PIPL art. 6, purpose limitation)")
    for p in purposes:
        if not _PURPOSE.fullmatch(p):
            raise PolicyError(f"{where}.purposes: {p!r} is not a purpose name "
                              "(lower-case letters, digits, _ . -; max 64)")
    if len(set(purposes)) != len(purposes):
        raise PolicyError(f"{where}.purposes lists a purpose twice")
    fields_raw = raw.get("fields", {})
    if not isinstance(fields_raw, dict):
        raise PolicyError(f"{where}.fields must be a table of field = mask")
    fields: dict[str, str] = {}
    for fname, mask in fields_raw.items():
        if fname not in RECORD_FIELDS:
            raise PolicyError(f"{where}.fields: unknown field {fname!r}; known: {', '.join(RECORD_FIELDS)}")
        if not isinstance(mask, str) or mask not in MASK_NAMES:
            raise PolicyError(f"{where}.fields.{fname}: unknown mask {mask!r}; "
                              f"known: {', '.join(MASK_NAMES)}")
        fields[fname] = mask
    reads = {"lookup", "read", "export"} & set(ops)
    if fields and not reads:
        raise PolicyError(f"{where}.fields is set but the role has no operation that returns a record "
                          "(lookup, read, export)")
    reveal = {f: frozenset(ps) for f, ps in _purpose_table(
        raw.get("reveal", {}), f"{where}.reveal", "field", fields, purposes,
        lambda f: f"the role does not see this field (add it to {where}.fields first)").items() if ps}
    writes = {"create", "update"} & set(ops)
    if "writable" in raw:
        writable = _strs(raw["writable"], f"{where}.writable")
        for fname in writable:
            if fname not in WRITABLE_FIELDS:
                raise PolicyError(f"{where}.writable: {fname!r} cannot be written; "
                                  f"writable fields: {', '.join(WRITABLE_FIELDS)}")
        if writable and not writes:
            raise PolicyError(f"{where}.writable is set but the role may neither create nor update")
        writable_set = frozenset(writable)
    else:
        writable_set = frozenset(WRITABLE_FIELDS) if writes else frozenset()
    budgets = _parse_budgets(raw.get("budgets", {}), f"{where}.budgets")
    op_purposes: dict[str, frozenset[str]] = {}
    for op, plist in _purpose_table(raw.get("operation_purposes", {}), f"{where}.operation_purposes",
                                    "operation", ops, purposes,
                                    lambda op: f"the role may not {op} (add it to {where}.operations first)"
                                    ).items():
        if not plist:
            raise PolicyError(f"{where}.operation_purposes.{op} is empty: leave {op} out of "
                              f"{where}.operations instead")
        op_purposes[op] = frozenset(plist)
    return Role(name=name, description=description, operations=frozenset(ops), purposes=tuple(purposes),
                fields=fields, reveal=reveal, writable=writable_set, budgets=budgets,
                operation_purposes=op_purposes)


class Policy:
    """A validated policy: roles, their operations, fields, masks, purposes and budgets.

    Immutable once loaded; a reload builds a new one and swaps it whole, so a
    request never sees half of an old policy and half of a new one.
    """

    def __init__(self, roles: Mapping[str, Role], *, source: str = "<memory>", version: int = 1) -> None:
        if not roles:
            raise PolicyError("the policy defines no roles")
        self.roles: dict[str, Role] = dict(roles)
        #: every purpose some role may state: the only purpose names that may be recorded as stated
        #: (a name that matches none is free text, which could be a resident's ID number or name)
        self.purpose_names: frozenset[str] = frozenset(p for r in self.roles.values() for p in r.purposes)
        self.source = source
        self.version = version
        for e in self.id_exposures():
            if e.refused:
                raise PolicyError(inference.refusal(e), code="policy.id_rebuild")

    # -- loading ------------------------------------------------------------
    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, source: str = "<memory>") -> Policy:
        _only_keys(doc, ("policy", "roles", "budgets"), "policy file")
        header = doc.get("policy", {})
        if not isinstance(header, dict):
            raise PolicyError("[policy] must be a table")
        _only_keys(header, ("version", "description"), "[policy]")
        version = header.get("version", 1)
        if version != 1:
            raise PolicyError(f"[policy].version {version!r} is not supported (this pivault reads version 1)")
        roles_raw = doc.get("roles")
        if not isinstance(roles_raw, dict) or not roles_raw:
            raise PolicyError("the policy defines no roles: add at least one [roles.NAME] table")
        roles_raw = dict(roles_raw)
        # budgets may also sit in a top-level [budgets.ROLE] table
        extra_budgets = doc.get("budgets", {})
        if not isinstance(extra_budgets, dict):
            raise PolicyError("[budgets] must be a table of [budgets.ROLE] tables")
        roles: dict[str, Role] = {}
        for name, raw in roles_raw.items():
            roles[name] = _parse_role(name, raw)
        for name, raw in extra_budgets.items():
            if name not in roles:
                raise PolicyError(f"budgets.{name}: no such role")
            if roles[name].budgets:
                raise PolicyError(f"budgets for role {name!r} are given twice "
                                  f"([roles.{name}.budgets] and [budgets.{name}])")
            b = _parse_budgets(raw, f"budgets.{name}")
            r = roles[name]
            roles[name] = Role(r.name, r.description, r.operations, r.purposes, r.fields, r.reveal,
                               r.writable, b, r.operation_purposes)
        return cls(roles, source=source, version=1)

    @classmethod
    def loads(cls, text: str, *, source: str = "<string>") -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_mapping(doc, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        return cls.loads(cls.read_text(path), source=str(Path(path)))

    @staticmethod
    def read_text(path: str | Path) -> str:
        """A policy file's text, with :meth:`load`'s checks (size, readable, UTF-8, not writable by all).

        The policy says who reads what: a file every account of the host may write lets any of
        them widen every role, and the service would take it at its next start or reload. The
        mode is checked on the descriptor the text is read from, so the file checked is the file
        read. A group-writable file is left to the operator (a shared admin group is common); a
        file owned by an account other than this one or root is refused.
        """
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_mode & stat.S_IWOTH:
                    raise PolicyError(f"the policy file {p.name} may be written by every account of this "
                                      "host, so anyone could widen every role; it was not read",
                                      code="policy.writable",
                                      hint=f"chmod o-w {p.name} (and check who changed it)")
                if st.st_uid not in (0, os.geteuid()):
                    # whoever may write its directory can put a file of their own in its place,
                    # with any mode: the account that owns the file is the one that wrote it
                    raise PolicyError(f"the policy file {p.name} belongs to another account (uid "
                                      f"{st.st_uid}) than the one running pivault or root, so that account "
                                      "could widen every role; it was not read", code="policy.owner",
                                      hint="check who wrote it, then chown it to this account or to root "
                                           "(and make its directory writable by them only)")
                data = fh.read(_MAX_POLICY_BYTES + 1)
            if len(data) > _MAX_POLICY_BYTES:
                raise PolicyError(f"{p.name} is larger than {_MAX_POLICY_BYTES} bytes")
            return data.decode("utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read the policy file {p}: {exc.strerror}",
                              code="policy.unreadable") from None
        except UnicodeDecodeError:
            raise PolicyError(f"{p} is not UTF-8") from None

    @staticmethod
    def default_text() -> str:
        return resources.files("pivault.policy").joinpath("default_policy.toml").read_text(encoding="utf-8")

    @classmethod
    def default(cls) -> Policy:
        """The shipped policy: officer, registrar, dpo, admin."""
        return cls.loads(cls.default_text(), source="<default policy>")

    # -- questions ----------------------------------------------------------
    def role(self, name: str) -> Role | None:
        return self.roles.get(name)

    def purposes_for(self, role: str) -> tuple[str, ...]:
        r = self.roles.get(role)
        return r.purposes if r else ()

    def budgets_for(self, role: str) -> Mapping[str, int | float]:
        r = self.roles.get(role)
        return dict(r.budgets) if r else {}

    def authorise(self, ctx: AccessContext, operation: str,
                  fields: Iterable[str] | None = None) -> Decision:
        """Decide whether ``ctx`` may perform ``operation``, and what it will see.

        ``fields``: for reads, the fields wanted (``None`` = all the role
        sees); for create/update, the fields written, each of which the role
        must be allowed to write. A ``reveal`` request is granted for the
        visible fields the role may reveal for the stated purpose, and refused
        when there is none.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        role = self.roles.get(ctx.role)
        if role is None:
            return _deny(ctx.role, operation, ctx.purpose, "policy.role",
                         "the caller's role is not in the policy")
        if operation not in role.operations:
            return _deny(role.name, operation, ctx.purpose, "policy.operation",
                         f"role {role.name!r} may not {operation}")
        if ctx.purpose not in role.purposes:
            return _deny(role.name, operation, ctx.purpose, "policy.purpose",
                         f"the stated purpose is not one of role {role.name!r}'s purposes "
                         f"({', '.join(role.purposes)})")
        only = role.operation_purposes.get(operation)
        if only is not None and ctx.purpose not in only:
            return _deny(role.name, operation, ctx.purpose, "policy.purpose",
                         f"role {role.name!r} may {operation} only for: {', '.join(sorted(only))}")
        wanted = list(fields) if fields is not None else None
        if operation in ("create", "update"):
            bad = sorted(set(wanted or ()) - role.writable)
            if bad:
                return _deny(role.name, operation, ctx.purpose, "policy.field",
                             f"role {role.name!r} may not write {', '.join(bad)}")
        visible = dict(role.fields)
        if wanted is not None and operation not in ("create", "update"):
            visible = {f: m for f, m in visible.items() if f in set(wanted)}
        revealed: frozenset[str] = frozenset()
        if ctx.reveal:
            revealed = role.revealable(ctx.purpose) & set(visible)
            if not revealed:
                return _deny(role.name, operation, ctx.purpose, "policy.reveal",
                             f"role {role.name!r} may not reveal full values for this purpose")
            visible = {f: ("none" if f in revealed else m) for f, m in visible.items()}
        return Decision(True, operation, role.name, ctx.purpose, fields=visible, revealed=revealed)

    def id_exposures(self) -> list[inference.IdExposure]:
        """Per role and purpose without a reveal of id_number: how far its other fields narrow the number.

        A mask on the number is worth nothing if the region code and birth
        date beside it are its own digits; :mod:`pivault.policy.inference`
        says how the positions are found and counted.
        """
        return [e for r in self.roles.values()
                for e in inference.exposures(apply_mask, r.name, r.purposes, r.fields, r.reveal,
                                             r.operations)]

    def grants_anonymous(self) -> bool:
        """True if any role would grant something to a caller without a token (never, once validated)."""
        return any(r.name.lower() in ANONYMOUS_NAMES and r.grants_anything() for r in self.roles.values())

    # -- explaining -----------------------------------------------------------
    def explain(self) -> list[dict[str, str]]:
        """One row per role, in words an operator reads: what it may do, see and reveal, and why."""
        rows: list[dict[str, str]] = []
        for r in self.roles.values():
            ops = [op for op in OPERATIONS if op in r.operations]
            seen = []
            for f in RECORD_FIELDS:
                if f in r.fields:
                    m = r.fields[f]
                    seen.append(f if m == "none" else f"{f}({'hidden' if m == 'full' else 'masked'})")
            reveal = [f"{f}: {', '.join(sorted(ps))}" for f, ps in sorted(r.reveal.items())]
            rows.append({
                "role": r.name,
                "operations": ", ".join(ops) or "-",
                "purposes": ", ".join(r.purposes) + "".join(
                    f"; {op} only for {', '.join(sorted(ps))}"
                    for op, ps in sorted(r.operation_purposes.items())),
                "sees": ", ".join(seen) or "no PI",
                "reveal": "; ".join(reveal) or "-",
                "writes": ", ".join(f for f in WRITABLE_FIELDS if f in r.writable) or "-",
                "budgets": ", ".join(f"{k}={v}" for k, v in sorted(r.budgets.items())) or "-",
                "description": r.description,
            })
        return rows

    def __repr__(self) -> str:
        return f"Policy(source={self.source!r}, roles={sorted(self.roles)})"
