"""Request and response bodies of the HTTP API.

Every request model forbids unknown keys (a misspelt field is an error, not
silently dropped) and bounds every string, so the published OpenAPI document
says exactly what the service accepts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BatchIn",
    "BatchItemResult",
    "BatchOut",
    "CopyOut",
    "Created",
    "Health",
    "LookupIn",
    "LookupOut",
    "PatchIn",
    "PolicyReloaded",
    "Problem",
    "ReadOut",
    "ResidentIn",
    "ResidentView",
    "RoleSummary",
    "StatsOut",
    "TokenCreateIn",
    "TokenCreated",
    "TokenList",
    "TokenView",
    "Updated",
]

_RECORD_ID = r"^r_[0-9a-z]{26}$"
_SHORT = 64
_ADDRESS = 200
_NOTES = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=_NOTES)


class Problem(BaseModel):
    """RFC 7807 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    errors: list[dict[str, object]] | None = None
    #: the field a value error is about (never its value)
    field: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class ResidentIn(_Strict):
    """A new resident. Derived facts (gender, birth date, region) come from the ID number."""

    name: str = Field(min_length=1, max_length=_SHORT)
    id_number: str = Field(min_length=1, max_length=_SHORT)
    mobile: str | None = Field(default=None, max_length=_SHORT)
    address: str | None = Field(default=None, max_length=_ADDRESS)
    notes: str | None = Field(default=None, max_length=_NOTES)


class BatchItem(_Strict):
    """One item of a batch; validated one by one, so one bad item rejects only itself."""

    name: str | None = Field(default=None, max_length=_SHORT)
    id_number: str | None = Field(default=None, max_length=_SHORT)
    mobile: str | None = Field(default=None, max_length=_SHORT)
    address: str | None = Field(default=None, max_length=_ADDRESS)
    notes: str | None = Field(default=None, max_length=_NOTES)


class BatchIn(_Strict):
    items: list[BatchItem] = Field(min_length=1, max_length=500)


class BatchItemResult(BaseModel):
    index: int
    status: Literal["created", "rejected"]
    record_id: str | None = None
    code: str | None = None
    detail: str | None = None


class BatchOut(BaseModel):
    read: int
    accepted: int
    rejected: int
    results: list[BatchItemResult]


class Created(BaseModel):
    record_id: str


class ResidentView(BaseModel):
    """A resident as the caller's role may see it: absent fields are not granted to the role."""

    model_config = ConfigDict(extra="forbid")

    record_id: str
    name: str | None = None
    id_number: str | None = None
    mobile: str | None = None
    address: str | None = None
    notes: str | None = None
    gender: str | None = None
    birth_date: str | None = None
    region_code: str | None = None


class ReadOut(BaseModel):
    record: ResidentView
    #: fields shown in full because the caller asked to reveal and the policy allows it
    revealed: list[str]


class LookupIn(_Strict):
    """Exactly one key: an ID number, a mobile number, or a name with a birth date."""

    id_number: str | None = Field(default=None, min_length=1, max_length=_SHORT)
    mobile: str | None = Field(default=None, min_length=1, max_length=_SHORT)
    name: str | None = Field(default=None, min_length=1, max_length=_SHORT)
    birth_date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    #: true or false only: a "yes" or a 1 asking for full values is a mistake to point out
    reveal: bool = Field(default=False, strict=True)

    @model_validator(mode="after")
    def _one_key(self) -> LookupIn:
        keys = [self.id_number is not None, self.mobile is not None,
                self.name is not None or self.birth_date is not None]
        if sum(keys) != 1:
            raise ValueError("give exactly one of: id_number, mobile, or name with birth_date")
        if (self.name is None) != (self.birth_date is None):
            raise ValueError("a lookup by name needs the birth date too")
        return self


class LookupOut(BaseModel):
    count: int
    records: list[ResidentView]
    revealed: list[str]


class PatchIn(_Strict):
    """The fields to correct; ``null`` clears an optional field."""

    name: str | None = Field(default=None, min_length=1, max_length=_SHORT)
    id_number: str | None = Field(default=None, min_length=1, max_length=_SHORT)
    mobile: str | None = Field(default=None, max_length=_SHORT)
    address: str | None = Field(default=None, max_length=_ADDRESS)
    notes: str | None = Field(default=None, max_length=_NOTES)


class Updated(BaseModel):
    record_id: str
    updated: list[str]


class CopyOut(BaseModel):
    """A data-subject copy (PIPL art. 45, GDPR art. 15): every field in full."""

    record: ResidentView
    generated_at: float
    legal_basis: str
    request_id: str


class StatsOut(BaseModel):
    stats: dict[str, object]


class TokenCreateIn(_Strict):
    principal: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
    role: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    purposes: list[str] | None = Field(default=None, max_length=32)
    expires: str = Field(default="30d", pattern=r"^\d{1,7}[smhdw]?$")


class TokenView(BaseModel):
    token_id: str
    principal: str
    role: str
    purposes: list[str]
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    suspended_at: float | None = None
    suspended_reason: str | None = None
    created_by: str
    state: Literal["active", "expired", "revoked", "suspended"]


class TokenCreated(BaseModel):
    #: shown once, never stored: keep it in a secret store or a 0600 file
    token: str
    info: TokenView


class TokenList(BaseModel):
    tokens: list[TokenView]


class RoleSummary(BaseModel):
    role: str
    operations: str
    purposes: str
    sees: str
    reveal: str
    writes: str


class PolicyReloaded(BaseModel):
    source: str
    roles: list[RoleSummary]
