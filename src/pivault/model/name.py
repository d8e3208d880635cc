"""Personal names: CJK names (with the ``·`` of minority names) and Latin names."""

from __future__ import annotations

import re
import unicodedata

from pivault.errors import ValidationError
from pivault.model._text import drop_invisible

#: the characters people type for the interpunct in transliterated names
_DOTS = re.compile(r"[\u00b7\u2022\u2027\u30fb\uff65\u2219\u22c5\u318d\u0387\uff0e.]")
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_CJK_NAME = re.compile(rf"[{_CJK}]+(?:·[{_CJK}]+)*")
#: Latin letters: ASCII, Latin-1 and Latin Extended-A/B, without the multiplication and division
#: signs (U+00D7, U+00F7) that sit among them and the click letters U+01C0-U+01C3, which show as
#: ``|``, ``||``, ``ǂ`` and ``!`` and would make ``Wang ǀi`` a name no lookup for ``Wang li`` finds
_LATIN = r"A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01bf\u01c4-\u024f"
_LATIN_NAME = re.compile(rf"[{_LATIN}]+(?:[ '\-.][{_LATIN}]+)*\.?")
_HAS_CJK = re.compile(f"[{_CJK}]")
_WS = re.compile(r"\s+")
MAX_LATIN = 64


def _err(code: str, message: str) -> ValidationError:
    return ValidationError(code, message, field="name")


def normalise(value: str) -> str:
    """Validate a name and return its canonical form.

    CJK names: 2 to 6 characters, not counting the middle dot, spaces removed,
    every dot variant folded to U+00B7. Latin names: letters with single
    spaces, hyphens and apostrophes, at most 64 characters; their case is
    kept (``ZHANG SAN`` is not ``Zhang San``). Characters that show nothing
    (zero-width, bidi controls) are dropped. Codes:
    ``name.empty``, ``name.length``, ``name.chars``.
    """
    if value is None or not str(value).strip():
        raise _err("name.empty", "the name is empty")
    v = drop_invisible(unicodedata.normalize("NFKC", str(value))).strip()
    if not v:  # nothing but characters that show nothing
        raise _err("name.empty", "the name is empty")
    v = _WS.sub(" ", v)
    if _HAS_CJK.search(v):
        v = v.replace(" ", "")
        v = _DOTS.sub("·", v)
        if not _CJK_NAME.fullmatch(v):
            raise _err("name.chars", "a Chinese name holds CJK characters and middle dots only")
        letters = len(v) - v.count("·")
        if not 2 <= letters <= 6 and v.count("·") == 0:
            raise _err("name.length", "a Chinese name has 2 to 6 characters")
        if v.count("·") and not 2 <= letters <= 15:
            raise _err("name.length", "a transliterated name has 2 to 15 characters")
        return v
    if len(v) > MAX_LATIN:
        raise _err("name.length", f"a Latin-script name has at most {MAX_LATIN} characters")
    if not _LATIN_NAME.fullmatch(v) or len(v) < 2:
        raise _err("name.chars", "a Latin-script name holds letters, spaces, hyphens and apostrophes")
    return v


def is_valid(value: str) -> bool:
    try:
        normalise(value)
    except ValidationError:
        return False
    return True
