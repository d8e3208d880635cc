"""Synthetic residents for leak tests: valid-looking, never real people."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

from pivault.model import divisions, resident_id

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏飞宇浩然思雨欣怡子轩梓涵"
ROADS = ["南京路", "淮海中路", "长安街", "人民路", "解放路", "中山路", "建设路", "和平街"]
PREFIXES = ["138", "139", "136", "150", "186", "189", "133", "177", "158", "131"]


BORN = (dt.date(1950, 1, 1), dt.date(2004, 12, 31))


def person(rng: random.Random, region: str | None = None,
           born_between: tuple[dt.date, dt.date] = BORN) -> dict[str, str]:
    codes = divisions.current_county_codes()
    code = region if region and len(region) == 6 else rng.choice(
        [c for c in codes if region is None or c.startswith(region)])
    lo, hi = born_between
    born = lo + dt.timedelta(days=rng.randrange((hi - lo).days + 1))
    idn = resident_id.make(code, born, rng.randrange(1, 1000))
    name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    mobile = rng.choice(PREFIXES) + f"{rng.randrange(10**8):08d}"
    place = divisions.name_of(code) or ""
    prov = divisions.province_of(code) or ""
    addr = (f"{prov}{place}{rng.choice(ROADS)}{rng.randrange(1, 999)}号"
            f"{rng.randrange(1, 30)}0{rng.randrange(1, 9)}室")
    return {"name": name, "id_number": idn, "mobile": mobile, "address": addr}


def people(n: int, seed: int = 1, **kw: object) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    for _ in range(n):
        yield person(rng, **kw)  # type: ignore[arg-type]
