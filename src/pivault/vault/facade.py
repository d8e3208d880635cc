"""The Vault: the one door through which PI goes in and out.

Every read or write of a resident's data is a method of :class:`Vault`, and
every method takes the :class:`~pivault.policy.AccessContext` of its caller.
The order inside is fixed: authorise → budget → audit (before any data
leaves; inside the transaction for changes) → decrypt → mask → return. The
store below holds only ciphertext and blind indexes; the keyring decrypts
only when the Vault asks. Nothing else in pivault decrypts.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pivault.crypto import IntegrityError, Keyring
from pivault.crypto.providers import RootKeyProvider
from pivault.crypto.recordkeys import RECORD_CIPHERTEXT_VERSION, RecordKey
from pivault.errors import NotFoundError, PivaultError, ValidationError
from pivault.keys import seen
from pivault.model import PI_FIELDS, Resident, is_record_id
from pivault.model import mobile as _mobile
from pivault.model import name as _name
from pivault.model import resident_id as _rid
from pivault.model.dates import written_date
from pivault.model.record import check_changes
from pivault.policy.context import AccessContext
from pivault.store.db import Database
from pivault.store.migrations import migrate
from pivault.store.records import NewRecords, RecordStore, StoredRecord
from pivault.vault import meta
from pivault.vault.checks import CheckTags, load_check_tags
from pivault.vault.guard import AccessDenied, Change, Guard, LocalGuard

if TYPE_CHECKING:
    from pivault.vault.home import VaultConfig
    from pivault.vault.imports import ImportProgress, ImportSummary

__all__ = [
    "OUTPUT_FIELDS",
    "DuplicateRecord",
    "Vault",
    "name_birth_key",
    "open_record",
    "seal",
    "seal_columns",
]

#: the keys of every record a Vault returns, in this order
OUTPUT_FIELDS: tuple[str, ...] = (
    "record_id", "name", "id_number", "mobile", "address", "notes",
    "gender", "birth_date", "region_code",
)
OnDuplicate = Literal["skip", "update", "reject"]
_V2 = bytes([RECORD_CIPHERTEXT_VERSION])

log = logging.getLogger("pivault.vault")


class DuplicateRecord(PivaultError):
    """A record with the same resident ID number is already in the vault."""

    code = "record.duplicate"

    def __init__(self, existing_record_id: str) -> None:
        super().__init__("a record with this resident ID number already exists",
                         hint="update the existing record instead")
        #: the record already holding the ID number (opaque; not in the message)
        self.existing_record_id = existing_record_id


def name_birth_key(name: str, birth_date: _dt.date) -> str:
    """The value the ``name_birth`` blind index is computed over."""
    return f"{name}|{birth_date.isoformat()}"


def index_inputs(keyring: Keyring, plain: Mapping[str, str]) -> dict[str, str]:
    """What each of the keyring's blind indexes is computed over, from a record's normalised fields.

    The one definition: sealing, the index rebuild of ``keys rewrap`` and the check tags all use it.
    """
    names = keyring.index_names
    values: dict[str, str] = {}
    idn = plain["id_number"]
    if "id_number" in names:
        values["id_number"] = idn
    if plain.get("mobile") and "mobile" in names:
        values["mobile"] = plain["mobile"]
    if "name_birth" in names:
        values["name_birth"] = _name_birth_of(plain["name"], idn)
    return values


def _name_birth_of(name: str, id_number: str) -> str:
    """:func:`name_birth_key` of a name and a normalised ID number's birth date.

    A normalised number's birth date was checked when it was normalised, and its
    ISO form is the number's digits 7-14 with dashes: sliced, not parsed into a
    date and formatted back (about a microsecond a resident in an import).
    Anything but the 18-character form goes the long way.
    """
    if len(id_number) == 18 and id_number[6:14].isdigit():
        return f"{name}|{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}"
    return name_birth_key(name, _rid.facts(id_number).birth_date)


def seal(keyring: Keyring, r: Resident, batch_id: str | None = None,
         checks: CheckTags | None = None) -> StoredRecord:
    """Encrypt a resident's fields and compute its blind indexes (and their check tags)."""
    plain = r.pi_fields()
    # under a new per-record key when the keyring has record keys on (the Vault's store does)
    fields, record_key = keyring.encrypt_record(r.record_id,
                                                {f: v.encode("utf-8") for f, v in plain.items()})
    values = index_inputs(keyring, plain)
    index = {name: keyring.blind_index(name, v) for name, v in values.items()}
    tags = checks.tags(r.record_id, values) if checks is not None else {}
    return StoredRecord(r.record_id, fields, index, batch_id=batch_id, record_key=record_key,
                        checks=tags)


def seal_columns(keyring: Keyring, residents: Sequence[Resident], batch_id: str | None = None,
                 checks: CheckTags | None = None) -> NewRecords:
    """:func:`seal` of each resident, column by column (:class:`NewRecords`): an import's chunk.

    The same ciphertext under a new record key each, the same index values and
    check tags; what changes is the shape, which a worker pickles and the
    importing process turns into rows at a fraction of the cost of a record
    object each. Each index is computed for the whole chunk in one call.
    """
    encrypt = keyring.encrypt_record
    names = RecordStore.FIELDS
    columns: dict[str, list[bytes | None]] = {f: [] for f in names}
    appends = [(f, columns[f].append) for f in names]
    keys: list[bytes | None] = []
    inputs: list[dict[str, str]] = []
    ids: list[str] = []
    for r in residents:
        plain = r.pi_fields()
        fields, record_key = encrypt(r.record_id, {f: v.encode("utf-8") for f, v in plain.items()})
        get = fields.get
        for f, add in appends:
            add(get(f))
        keys.append(record_key)
        inputs.append(index_inputs(keyring, plain))
        ids.append(r.record_id)
    index: dict[str, tuple[list[int], list[bytes], list[bytes | None]]] = {}
    for name in keyring.index_names:
        positions = [k for k, v in enumerate(inputs) if name in v]
        if not positions:
            continue
        values = [inputs[k][name] for k in positions]
        tags: list[bytes | None] = (
            list(checks.tags_many(name, [ids[k] for k in positions], values)) if checks is not None
            else [None] * len(positions))
        index[name] = (positions, keyring.blind_index_many(name, values), tags)
    return NewRecords(ids, columns, index, keys, batch_id)


def _integrity(record_id: str, exc: IntegrityError) -> IntegrityError:
    field = exc.field or "?"
    if exc.code == "crypto.shredded":
        err = IntegrityError(f"record {record_id}: its record key is gone (the record was erased);"
                             " it cannot be decrypted", field=field, code=exc.code)
        err.hint = "an erased record stays unreadable in every copy, backups included"
        return err
    err = IntegrityError(
        f"record {record_id}: the ciphertext of field {field!r} failed authentication"
        " (altered, copied from another record or field, or made under a key this keyring lacks)",
        field=field, code=exc.code)
    err.hint = "the store was changed outside pivault: restore the record from a backup"
    return err


def decrypt_fields(keyring: Keyring, stored: StoredRecord,
                   fields: Iterable[str] | None = None) -> dict[str, str]:
    """Plaintext of some (default: all) fields; IntegrityError names record and field."""
    want = stored.fields if fields is None else {f: stored.fields[f] for f in fields
                                                   if f in stored.fields}
    try:
        raw = keyring.decrypt_many(stored.record_id, want, record_key=stored.record_key)
    except IntegrityError as exc:
        raise _integrity(stored.record_id, exc) from None
    return {f: v.decode("utf-8") for f, v in raw.items()}


class _Opener:
    """Decrypts fields of one stored record as asked, unwrapping its record key at most once."""

    __slots__ = ("_key", "_keyring", "_plain", "stored")

    def __init__(self, keyring: Keyring, stored: StoredRecord) -> None:
        self._keyring = keyring
        self.stored = stored
        self._key: RecordKey | None = None
        self._plain: dict[str, str] = {}

    def fields(self, names: Iterable[str]) -> dict[str, str]:
        """Plaintext of ``names`` (those the record has); IntegrityError names record and field."""
        st, plain = self.stored, self._plain
        try:
            for f in names:
                if f in plain:
                    continue
                ct = st.fields.get(f)
                if ct is None:
                    continue
                if st.record_key is not None and ct[:1] == _V2:
                    if self._key is None:
                        self._key = self._keyring.open_record_key(st.record_id, st.record_key)
                    raw = self._key.decrypt(f, ct)
                else:
                    raw = self._keyring.decrypt(st.record_id, f, ct)
                plain[f] = raw.decode("utf-8")
        except IntegrityError as exc:
            raise _integrity(st.record_id, exc) from None
        return plain

    def resident(self) -> Resident:
        p = self.fields(self.stored.fields)
        return Resident(record_id=self.stored.record_id, name=p["name"], id_number=p["id_number"],
                        mobile=p.get("mobile"), address=p.get("address"), notes=p.get("notes"))


def shredded(stored: StoredRecord) -> bool:
    """Whether a record's key is gone while its row is still there: the record is erased.

    ``erase`` destroys the key (committed in the record-key store) before it
    deletes the row (in the data store); a reader between the two, or after an
    erasing process died between them, finds the row. The door treats it as
    the erasure made it: not there.
    """
    if stored.record_key is not None:
        return False
    ct = stored.fields.get("name")
    return ct is not None and ct[:1] == _V2


def open_record(keyring: Keyring, stored: StoredRecord) -> Resident:
    """The resident held in a stored record (fields were normalised when sealed)."""
    p = decrypt_fields(keyring, stored)
    return Resident(record_id=stored.record_id, name=p["name"], id_number=p["id_number"],
                    mobile=p.get("mobile"), address=p.get("address"), notes=p.get("notes"))


def _asked_by(ctx: AccessContext) -> str:
    """Who asked for an erasure, as kept beside its shred (ids and names of staff only, no PI)."""
    return json.dumps({"principal": ctx.principal, "role": ctx.role, "purpose": ctx.purpose,
                       "request_id": ctx.request_id, "token_id": ctx.token_id, "source": ctx.source},
                      separators=(",", ":"))


def _asker(asked_by: str) -> AccessContext:
    """The caller of an erasure kept by :func:`_asked_by`, to write its entry in their name."""
    who = json.loads(asked_by)
    return AccessContext(principal=str(who["principal"]), role=str(who["role"]),
                         purpose=str(who["purpose"]), request_id=str(who["request_id"]),
                         token_id=None if who.get("token_id") is None else str(who["token_id"]),
                         source=str(who.get("source") or "cli"))


def _parse_birth_date(value: str | _dt.date) -> _dt.date:
    if isinstance(value, _dt.date):
        return value
    text = str(value).strip()
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        pass
    # the forms the leak check reads a dump's birth dates in: a lookup takes them too
    parts = written_date(text)
    if parts is not None:
        try:
            return _dt.date(*parts)
        except ValueError:
            pass
    raise ValidationError("birth_date.format", "a birth date is a real date written YYYY-MM-DD, "
                          "YYYY/M/D, YYYYMMDD or YYYY年M月D日", field="birth_date")


class Vault:
    """The one door: put, get, find, update, erase, import — each with an AccessContext.

    Build one with :meth:`open` (from a vault home) or from an open
    :class:`~pivault.store.Database` and :class:`~pivault.crypto.Keyring`.
    ``guard`` decides, counts, audits and masks (default: :class:`LocalGuard`).
    """

    def __init__(self, db: Database, keyring: Keyring, *, guard: Guard | None = None,
                 config: VaultConfig | None = None, check: bool = True,
                 record_key_store: str | None = None) -> None:
        if check:
            meta.check(db, keyring)
        self.db = db
        #: the store keeps the newest keyring generation it has seen (pivault.keys.seen)
        self._marked = check or db.table_exists(seen.TABLE)
        self.keyring = keyring
        from pivault.keys.attach import record_store

        # each record's fields under a key of its own, kept beside the keyring: erase shreds. The
        # record-key store must be the one this store is bound to: a missing one is refused, never
        # made anew and empty (every record would read as erased)
        self.store: RecordStore = record_store(db, keyring, home=config.home if config else None,
                                               url=record_key_store)
        self.guard: Guard = guard if guard is not None else LocalGuard()
        self.config = config
        self._checks: CheckTags | None = None
        #: whether the bytes the last :meth:`erase` freed are still in the files (a reader of an
        #: older snapshot kept the purge from finishing): the erasure stands, its bytes go with
        #: the next purge or ``pivault scrub``
        self.purge_pending = False
        #: called with the coarse facts (region code, birth year) of every record read,
        #: after decryption; the global detector's sweep rules listen here
        self.read_observers: list[Callable[[AccessContext, list[tuple[str, int]]], None]] = []

    # -- construction ------------------------------------------------------
    @classmethod
    def initialise(cls, db: Database, keyring: Keyring, *, guard: Guard | None = None,
                   record_key_store: str | None = None) -> Vault:
        """Bring the store's schema up to date and bind it to ``keyring`` (idempotent).

        A new vault's record-key store (``record_key_store``, default beside
        the keyring) is made here and bound to the store: from then on the
        vault opens only with that one (:mod:`pivault.keys.binding`).
        """
        migrate(db)
        meta.bind(db, keyring)
        return cls(db, keyring, guard=guard, record_key_store=record_key_store)

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, passphrase: str | None = None,
             provider: RootKeyProvider | None = None, guard: Guard | None = None) -> Vault:
        """Open the vault kept in ``home`` (default ``$PIVAULT_HOME`` or ``./.pivault``).

        The passphrase comes from the argument, else ``$PIVAULT_PASSPHRASE``,
        else a terminal prompt. Without ``guard`` the door gets the audit
        trail, read budgets, canaries and detector of :mod:`pivault.detect`
        around the local guard.
        """
        from pivault.vault import home as _home

        cfg = _home.load(home)
        if provider is None:
            # the root key the keyring's header names: a passphrase, or a KMS key after
            # `pivault keys change-root --kms`
            from pivault.crypto.providers import provider_for

            provider = provider_for(Keyring.peek(cfg.keyring_path)["provider"], passphrase=passphrase)
        keyring = Keyring.open(cfg.keyring_path, provider)
        db = Database(cfg.existing_store_url())
        try:
            vault = cls(db, keyring, guard=guard, config=cfg)
            if guard is None:
                # an opened vault is always audited and budgeted: there is no switch to turn it off
                from pivault.detect.setup import build_guard

                watch = build_guard(db, keyring, keyring_path=cfg.keyring_path, home=cfg.home,
                                    inner=LocalGuard())
                vault.guard = watch
                watch.attach(vault)
            try:
                left = vault.finish_erasures()
            except PivaultError as exc:
                # the next opening, or an erasure of the record, finishes it; this one goes on
                log.warning("could not finish interrupted erasures (%s)", exc.code)
            else:
                if left:
                    log.warning("finished %d erasure(s) interrupted after their keys were destroyed", left)
            return vault
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        # the guard first: its threads (detector, audit journal) still write to the store
        getattr(self.guard, "close", lambda: None)()
        getattr(self.store, "close", lambda: None)()
        self.db.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vault(vault_id={self.keyring.vault_id!r}, store={self.db.url.redacted!r})"

    @property
    def checks(self) -> CheckTags:
        """The check tags of this vault's blind-index entries (their key is read, or made, once)."""
        tags = self._checks
        if tags is None:
            tags = self._checks = load_check_tags(self.db, self.keyring)
        return tags

    # -- the fixed order ------------------------------------------------------
    def _authorise(self, ctx: AccessContext, operation: str, fields: Sequence[str],
                   record_ids: Sequence[str] = ()) -> None:
        try:
            self.guard.authorise(ctx, operation, fields)
        except AccessDenied:
            self.guard.audit(ctx, operation, record_ids, "denied")
            raise

    def _check_record_id(self, ctx: AccessContext, operation: str, record_id: str) -> None:
        """Refuse what is not a record id before it can reach the audit trail.

        Whatever is asked for is recorded, and the trail is kept for years and
        cannot be edited; an ID number typed where a record id belongs must not
        become one of its entries. The refusal itself is recorded, without it.
        """
        if not is_record_id(record_id):
            self.guard.audit(ctx, operation, (), "invalid")
            raise ValidationError("record.id", "this is not a record id (r_ and 26 letters or digits); "
                                  "to find a resident by ID number or mobile use find")

    def _budget(self, ctx: AccessContext, operation: str, n: int,
                record_ids: Sequence[str] = ()) -> None:
        try:
            self.guard.budget(ctx, operation, n)
        except AccessDenied:
            self.guard.audit(ctx, operation, record_ids, "denied")
            raise

    def _present(self, ctx: AccessContext, r: Resident) -> dict[str, str | None]:
        full = r.to_dict()
        mask = self.guard.mask
        out: dict[str, str | None] = {"record_id": r.record_id}
        for f in OUTPUT_FIELDS[1:]:
            out[f] = mask(ctx, f, full[f])
        return out

    # -- records ----------------------------------------------------------------
    def put(self, record: Resident | Mapping[str, str | None], *, ctx: AccessContext) -> str:
        """Validate, encrypt and store one resident; return its record id.

        Raises :class:`ValidationError` for bad input and :class:`DuplicateRecord`
        when the ID number is already in the vault.
        """
        # a Resident made by its constructor rather than by `parse` holds its fields as written
        # ("…109x", full-width digits): parsed again, or it would be sealed under index values
        # of its own, a second record for a resident the vault holds, out of reach of every lookup
        r = (Resident.parse(record.pi_fields(), record_id=record.record_id) if isinstance(record, Resident)
             else Resident.parse(record))
        self._authorise(ctx, "put", tuple(r.pi_fields()))
        self._budget(ctx, "put", 1)
        sealed_at = self.keyring.write_generation()
        sealed = seal(self.keyring, r, checks=self.checks)
        with self.db.transaction():
            self.store.lock_id_numbers([sealed.index["id_number"]])
            if sealed_at < self._keyring_mark():
                # the keys changed since it was sealed (those of then may be retired by now): again,
                # with the keyring brought up to the store's mark
                value = sealed.index["id_number"]
                sealed = seal(self.keyring, r, checks=self.checks)
                if sealed.index["id_number"] != value:  # a new index key: the number's new value too
                    self.store.lock_id_numbers([sealed.index["id_number"]])
            existing = self.ids_by_id_number({r.id_number: sealed.index["id_number"]})
            if not existing:
                self.guard.audit(ctx, "put", [r.record_id], "ok")
                self.store.insert([sealed])
                return r.record_id
        # the refusal tells the caller that the number is in the vault: recorded (outside the
        # transaction, which writes nothing), and charged to the read budgets like a lookup
        self.guard.audit(ctx, "put", [existing[r.id_number]], "duplicate")
        raise DuplicateRecord(existing[r.id_number])

    def get(self, record_id: str, *, ctx: AccessContext) -> dict[str, str | None]:
        """One record, masked unless the context reveals (and the guard lets it)."""
        return self._get(record_id, ctx, "get")

    def subject_copy(self, record_id: str, *, ctx: AccessContext) -> dict[str, str | None]:
        """A data subject's copy of their own record, for a rights request (PIPL art. 45, GDPR art. 15).

        Read like :meth:`get`, but authorised and audited as ``rights.copy``:
        a full copy handed out of the vault is an export, and an auditor
        asking who took records out must find it under its own name rather
        than among ordinary reads. The caller's context states ``reveal``
        when the copy is to hold full values.
        """
        return self._get(record_id, ctx, "rights.copy")

    def _get(self, record_id: str, ctx: AccessContext, operation: str) -> dict[str, str | None]:
        self._check_record_id(ctx, operation, record_id)
        self._authorise(ctx, operation, PI_FIELDS, [record_id])
        self._budget(ctx, operation, 1, [record_id])
        stored = self.store.get(record_id)
        if stored is None or (stored.record_key is None and shredded(stored)):
            self.guard.audit(ctx, operation, [record_id], "not_found")
            raise NotFoundError("no record with this id", code="record.not_found")
        self.guard.audit(ctx, operation, [record_id], "ok")
        resident = open_record(self.keyring, stored)
        self._observe(ctx, [resident])
        return self._present(ctx, resident)

    def find(self, *, id_number: str | None = None, mobile: str | None = None,
             name: str | None = None, birth_date: str | _dt.date | None = None,
             ctx: AccessContext) -> list[dict[str, str | None]]:
        """Records matching every criterion given, exactly.

        The blind index narrows the search to a few candidates (several
        residents share each index value on purpose); their fields are
        decrypted inside the Vault and compared, and only true matches are
        counted, audited and returned. A name is searched together with a
        birth date.
        """
        self._authorise(ctx, "find", PI_FIELDS)
        try:
            want, born = self._query(id_number, mobile, name, birth_date)
        except ValidationError:
            # what was asked is not recorded (it may be PI), but that something was asked is
            self.guard.audit(ctx, "find", (), "invalid")
            raise
        return self._find(want, born, ctx)

    @staticmethod
    def _query(id_number: str | None, mobile: str | None, name: str | None,
               birth_date: str | _dt.date | None) -> tuple[dict[str, str], _dt.date | None]:
        """The normalised criteria of a lookup, or :class:`ValidationError`."""
        want: dict[str, str] = {}
        if id_number is not None:
            want["id_number"] = _rid.normalise(id_number)
        if mobile is not None:
            want["mobile"] = _mobile.normalise(mobile)
        born: _dt.date | None = None
        if (name is None) != (birth_date is None):
            raise ValidationError("find.query", "a name is searched together with a birth date")
        if name is not None and birth_date is not None:
            want["name"] = _name.normalise(name)
            born = _parse_birth_date(birth_date)
        if not want:
            raise ValidationError("find.query",
                                  "give an ID number, a mobile number, or a name and a birth date")
        return want, born

    def _find(self, want: dict[str, str], born: _dt.date | None,
              ctx: AccessContext) -> list[dict[str, str | None]]:
        kr = self.keyring
        if "id_number" in want:
            cands = self._lookup("id_number", want["id_number"])
        elif "mobile" in want:
            cands = self._lookup("mobile", want["mobile"])
        else:
            assert born is not None
            cands = self._lookup("name_birth", name_birth_key(want["name"], born))
        check = [f for f in ("name", "id_number", "mobile") if f in want]
        if born is not None and "id_number" not in check:
            check.append("id_number")
        # each candidate: only the compared fields, its record key unwrapped once for all of them
        matches: list[_Opener] = []
        for c in cands:
            if c.record_key is None and shredded(c):
                continue  # erased: its key is gone, its row not yet
            opener = _Opener(kr, c)
            plain = opener.fields(check)
            if any(plain.get(f) != v for f, v in want.items()):
                continue
            if born is not None and _rid.facts(plain["id_number"]).birth_date != born:
                continue
            matches.append(opener)
        ids = [m.stored.record_id for m in matches]
        self._budget(ctx, "find", len(ids), ids)
        self.guard.audit(ctx, "find", ids, "ok" if ids else "not_found")
        residents = [m.resident() for m in matches]
        self._observe(ctx, residents)
        return [self._present(ctx, r) for r in residents]

    def _observe(self, ctx: AccessContext, residents: Sequence[Resident]) -> None:
        if self.read_observers and residents:
            facts = [(r.region_code, r.birth_year) for r in residents]
            for observer in self.read_observers:
                observer(ctx, facts)

    def update(self, record_id: str, changes: Mapping[str, str | None], *,
               ctx: AccessContext) -> None:
        """Change PI fields of one record (``None`` clears an optional field).

        The whole record is validated again and re-encrypted; the old
        ciphertext is purged from the SQLite files.
        """
        unknown = sorted(set(changes) - set(PI_FIELDS))
        if unknown:
            raise ValidationError("update.field", "only PI fields can be changed: "
                                  + ", ".join(PI_FIELDS))
        self._check_record_id(ctx, "update", record_id)
        self._authorise(ctx, "update", tuple(changes), [record_id])
        try:
            # before the record is read: a bad value is refused, and recorded, alike for a record that
            # exists and one that does not (a refusal inside the transaction left no entry at all)
            check_changes(changes)
        except ValidationError:
            self.guard.audit(ctx, "update", [record_id], "invalid")
            raise
        self._budget(ctx, "update", 1, [record_id])
        holder: str | None = None
        with self.db.transaction():
            # writers of ID numbers first, then this record's row, then the new number (no cycle
            # with an import's chunk, which holds every number and then rows it updates)
            self.store.lock_id_numbers([])
            self._keyring_mark()  # the keyring up to the store's mark: what is sealed below may commit
            stored = self.store.get(record_id, for_update=True)
            if stored is not None and shredded(stored):
                stored = None  # erased (its key is gone): only `erase` still removes its row
            if stored is not None:
                current = open_record(self.keyring, stored)
                merged: dict[str, str | None] = dict(current.pi_fields())
                merged.update(changes)
                new = Resident.parse(merged, record_id=record_id)
                sealed = seal(self.keyring, new, stored.batch_id, self.checks)
                if new.id_number != current.id_number:
                    self.store.lock_id_numbers([sealed.index["id_number"]])
                    other = self.ids_by_id_number({new.id_number: sealed.index["id_number"]})
                    holder = other.get(new.id_number)
                if holder is None:
                    self.guard.audit(ctx, "update", [record_id], "ok")
                    self.store.replace(sealed)
                    self.changed(ctx, [(record_id, frozenset(stored.index), frozenset(sealed.index))])
        # refusals are recorded outside the transaction, which wrote nothing
        if stored is None:
            self.guard.audit(ctx, "update", [record_id], "not_found")
            raise NotFoundError("no record with this id", code="record.not_found")
        if holder is not None:
            # the record being changed first, the one that holds the number last
            self.guard.audit(ctx, "update", [record_id, holder], "duplicate")
            raise DuplicateRecord(holder)
        self.store.purge_freed()

    def erase(self, record_id: str, *, ctx: AccessContext) -> None:
        """Delete a record, its index entries and the rejected rows holding its ID number; then purge.

        On SQLite the erased ciphertext and its record key are then gone from
        the database, WAL and journal files of both stores, unless another
        connection was reading an older snapshot meanwhile (a backup, an
        export's fetch, a long read): the erasure stands, but its bytes stay in
        the files until the next erasure or correction purges them, or
        ``pivault scrub``; :attr:`purge_pending` then says so, for the caller
        to tell its user. On PostgreSQL the server's WAL and backups keep the
        ciphertext until they expire (see docs).
        """
        self._check_record_id(ctx, "erase", record_id)
        self._authorise(ctx, "erase", PI_FIELDS, [record_id])
        self._budget(ctx, "erase", 1, [record_id])
        with self.db.transaction():
            # the row locked before anything is deleted: a correction of the record finishes first
            # (its new index entries and key are then erased with it), and of two erasures the
            # second finds nothing. A row whose key is gone (an erasure that died after destroying
            # the key) is deleted here too: asked again, the erasure finishes
            stored = self.store.get(record_id, for_update=True)
            exists = stored is not None
            keys = getattr(self.store, "keys", None)
            if stored is not None:
                from pivault.vault import imports

                # the rows of theirs an import rejected go too (read before the key is destroyed);
                # the trail names them after the record
                rejects = imports.erase_rejects(self, stored)
                if rejects and keys is not None:
                    # beside the record keys, where a restored older backup cannot bring them back
                    keys.note_erased_rejects(rejects)
                if keys is not None:
                    # an erasure of this record that died after destroying its key: its entry, now
                    for _, asked_by in keys.pending_erasures([record_id]):
                        self.guard.audit(_asker(asked_by), "erase", [record_id], "ok")
                self.guard.audit(ctx, "erase", [record_id, *rejects], "ok")
                eraser = getattr(self.store, "erase_records", None)
                if eraser is not None:
                    eraser([record_id], _asked_by(ctx))
                else:
                    self.store.delete(record_id)
                meta.count_erasure(self.db)  # what `pivault scrub` has still to rewrite
        if keys is not None:
            keys.clear_erasures([record_id])  # committed: its entry is in the trail
        if not exists:
            self.guard.audit(ctx, "erase", [record_id], "not_found")
            raise NotFoundError("no record with this id", code="record.not_found")
        self.purge_pending = not self.store.purge_freed()

    def finish_erasures(self) -> int:
        """Finish the erasures that died after destroying their records' keys; how many were left.

        An erasure destroys the record's key in the record-key store (committed there), then
        deletes its row and writes its audit entry in one transaction of the data store: the
        two stores share no transaction. One killed in between left the resident erased
        (unreadable) but its row in place and its audit entry lost. The shred kept who asked
        (:meth:`~pivault.keys.shred.RecordKeyStore.delete_records`); this deletes the row and
        writes the entry in their name, the request id theirs. Run by :meth:`open`; an erasure
        still running in another process is waited for (its row is locked), then found done.
        """
        keys = getattr(self.store, "keys", None)
        if keys is None:
            return 0
        finished = 0
        for record_id, asked_by in keys.pending_erasures():
            with self.db.transaction():
                if self.store.get(record_id, for_update=True) is not None:
                    self.guard.audit(_asker(asked_by), "erase", [record_id], "ok")
                    self.store.delete(record_id)
                    meta.count_erasure(self.db)
                    finished += 1
            keys.clear_erasures([record_id])
        if finished:
            self.purge_pending = not self.store.purge_freed()
        return finished

    def changed(self, ctx: AccessContext, changes: Sequence[Change]) -> None:
        """Tell the guard, inside the write transaction, which records changed in place.

        What the guard keeps beside the records (how many canaries hold a
        mobile, which ``stats`` subtracts) must move with a correction in the
        same transaction, or the counts shown to users drift by one per change.
        """
        hook = getattr(self.guard, "changed", None)
        if hook is not None and changes:
            hook(ctx, changes)

    def _keyring_mark(self) -> int:
        """First in a write transaction: the newest keyring generation the store has seen.

        Held until the transaction ends, with this vault's keyring brought up to it
        (:func:`pivault.keys.seen.require_current`): a value sealed with an older
        keyring generation is sealed again before it is written. 0 on a store opened
        unchecked whose schema predates the mark.
        """
        if not self._marked:
            return 0
        return seen.require_current(self.db, self.keyring)

    # -- helpers for the import and for uniqueness -----------------------------
    def _lookup(self, index_name: str, value: str) -> list[StoredRecord]:
        """Records whose index entry matches ``value`` under any key of the index.

        During a blind-index key rotation some entries still carry the old
        key's value until the rebuild reaches them (``pivault keys rewrap``).
        """
        kr = self.keyring
        check = self.checks.checker(index_name, value)
        if kr.index_versions(index_name) == 1:
            return self.store.lookup(index_name, (kr.blind_index(index_name, value),), check)
        return self.store.lookup(index_name, kr.blind_index_all(index_name, value), check)

    def ids_by_id_number(self, wanted: Mapping[str, bytes]) -> dict[str, str]:
        """Existing record id per normalised ID number, for ``{id_number: blind index}``.

        Internal: decrypts the ID numbers of the candidates whose check tag fits (usually
        only the record holding the number, none for a new one), returns only ids.
        """
        if not wanted:
            return {}
        kr = self.keyring
        # blind index value -> the numbers searched under it
        by_value: dict[bytes, list[str]] = {}
        if kr.index_versions("id_number") > 1:  # a rotation is rebuilding the index
            for idn in wanted:
                for v in kr.blind_index_all("id_number", idn):
                    by_value.setdefault(v, []).append(idn)
        else:
            for idn, v in wanted.items():
                by_value.setdefault(bytes(v), []).append(idn)
        # only the entries whose check tag fits one of the numbers (or that have no tag)
        tag = self.checks.tag
        keep = sorted({rid for value, rid, t in self.store.entry_tags("id_number", list(by_value))
                       if t is None or any(t == tag("id_number", rid, idn) for idn in by_value[value])})
        out: dict[str, str] = {}
        for stored in self.store.get_records(keep) if keep else ():
            if shredded(stored):
                continue  # erased: the number is free
            plain = decrypt_fields(kr, stored, ("id_number",))["id_number"]
            if plain in wanted and plain not in out:
                out[plain] = stored.record_id
        return out

    # -- import -------------------------------------------------------------------
    def import_files(
        self, paths: Sequence[str | os.PathLike[str]], *, ctx: AccessContext | None = None,
        mapping: Mapping[str, str] | None = None, ignore: Sequence[str] = (),
        encoding: str | None = None, on_duplicate: OnDuplicate = "skip",
        workers: int | None = None, progress: Callable[[ImportProgress], None] | None = None,
        chunk_size: int | None = None,
    ) -> ImportSummary:
        """Import CSV/TSV, JSON Lines or Parquet files; see docs/import.md.

        Bad rows go to the reject table; the summary reconciles
        ``read = imported + rejected + duplicates``. Safe to interrupt and
        run again: it resumes where the last committed chunk ended.
        """
        from pivault.policy.context import local_operator
        from pivault.vault import imports

        return imports.import_files(
            self, [Path(p) for p in paths], ctx=ctx or local_operator("import"), mapping=mapping,
            ignore=ignore, encoding=encoding, on_duplicate=on_duplicate, workers=workers,
            progress=progress, chunk_size=chunk_size)

    def rejects(self, *, ctx: AccessContext, batch_id: str | None = None,
                limit: int | None = 1000) -> list[dict[str, Any]]:
        """Rejected rows with line and code; their cells masked unless revealed."""
        from pivault.vault import imports

        return imports.show_rejects(self, ctx=ctx, batch_id=batch_id, limit=limit)

    def batches(self, *, ctx: AccessContext) -> list[dict[str, Any]]:
        """Import batches and their counts (no PI)."""
        from pivault.vault import imports

        self._authorise(ctx, "stats", ())
        return imports.list_batches(self.db)

    # -- stats --------------------------------------------------------------------
    def stats(self, ctx: AccessContext, *, key_usage: bool = True) -> dict[str, Any]:
        """Counts, sizes and key ids in use; never a value.

        ``key_usage`` reads the key id of every record's name ciphertext
        (one column scan): which data keys still protect data.
        """
        from pivault.vault import imports

        self._authorise(ctx, "stats", ())
        self.guard.audit(ctx, "stats", (), "ok")
        from pivault.detect.canary import canary_counts

        store = self.store.stats()
        # canary residents are left out of every count shown to users
        hidden = canary_counts(self.db)
        store["rows"] = int(store["rows"]) - hidden["rows"]  # type: ignore[call-overload]
        entries = store.get("index_entries")
        if isinstance(entries, dict):
            for index, n in hidden.items():
                if index in entries:
                    entries[index] = max(0, int(entries[index]) - n)
        out: dict[str, Any] = {"vault_id": self.keyring.vault_id, "store": store}
        out["imports"] = imports.counts(self.db)
        erased, scrubbed_at = meta.erasures_since_scrub(self.db)
        out["erasure"] = {"erased_since_scrub": erased, "last_scrub": scrubbed_at}
        keys = self.keyring.key_info()
        out["keys"] = [{k: v for k, v in info.items() if k != "keys"} for info in keys]
        if key_usage:
            out["field_key_ids_in_use"] = self._key_usage()
        return out

    def region_counts(self, record_ids: Iterable[str], *, ctx: AccessContext) -> dict[str, int]:
        """How many of these records fall in each region code (the ID number's first six digits).

        For the counts of a leak case: a resident a dump names without an ID
        number (by mobile, by name and birth date) is still placed where the
        vault's record says. Each ID number is decrypted in memory and all but
        its region code dropped at once; only the counts leave, never which
        record is where. Records erased since they were matched are not counted.
        """
        self._authorise(ctx, "stats", ())
        ids = sorted(set(record_ids))
        counts: dict[str, int] = {}
        for i in range(0, len(ids), 5000):
            for stored in self.store.get_records(ids[i:i + 5000]):
                if shredded(stored):
                    continue
                region = decrypt_fields(self.keyring, stored, ("id_number",)).get("id_number", "")[:6]
                if region:
                    counts[region] = counts.get(region, 0) + 1
        self.guard.audit(ctx, "stats", (), "ok")
        return counts

    def _key_usage(self) -> dict[str, int]:
        # format-1 names carry the field key id at bytes 2..5; format-2 names are under a
        # record key, itself wrapped by a field key that the record-key store counts
        if self.db.dialect == "sqlite":
            sql = ("SELECT substr(name, 3, 4) AS k, COUNT(*) FROM records"
                   " WHERE substr(name, 1, 1) = x'01' GROUP BY k")
        else:
            sql = ("SELECT substring(name from 3 for 4) AS k, COUNT(*) FROM records"
                   " WHERE substring(name from 1 for 1) = '\\x01'::bytea GROUP BY k")
        out: dict[str, int] = {}
        for k, n in self.db.query(sql):
            if k is None:
                continue
            out[str(int.from_bytes(bytes(k), "big"))] = int(n)
        keys = getattr(self.store, "keys", None)
        if keys is not None:
            for kid, n in keys.key_ids_in_use().items():
                out[str(kid)] = out.get(str(kid), 0) + n
        return out
