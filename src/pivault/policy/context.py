"""Who is asking, and why: passed with every call through the Vault door."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

#: a stated purpose: a name like the policy's purposes (lower-case letters, digits, ``_ . -``,
#: at most 64), never free text, which could carry a resident's name into the audit trail
PURPOSE_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def new_request_id() -> str:
    return "q_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class AccessContext:
    """The caller of one operation.

    ``principal`` and ``role`` come from an authenticated token (API) or the
    operator's own identity (CLI, ``local:<user>`` with role ``operator``);
    ``purpose`` is the stated purpose of the request (PIPL art. 6: use limited
    to a stated purpose). ``reveal`` asks for full values instead of masks;
    whether it is granted is the policy's decision, not the caller's.
    """

    principal: str
    role: str
    purpose: str
    request_id: str = field(default_factory=new_request_id)
    reveal: bool = False
    token_id: str | None = None
    source: str = "cli"  # "cli", "api", "system"


def local_operator(purpose: str = "administration", *, reveal: bool = False) -> AccessContext:
    """The context of a person at the vault's own command line (holds the keyring passphrase)."""
    return AccessContext(principal=local_principal(), role="operator", purpose=purpose,
                         reveal=reveal, source="cli")


def local_principal() -> str:
    """``local:<account>``: the operating-system account this process runs as.

    Read from the process's user id, not from ``$USER`` or ``$LOGNAME``: those are
    the caller's to set, and the two-person rule of exports compares this name
    with the issuer of an approver's token.
    """
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        import getpass

        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
    return f"local:{user}"
