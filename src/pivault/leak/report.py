"""The breach report of a leak case: an HTML page with charts and its JSON twin.

It holds what a notice under PIPL art. 57 and GDPR art. 33/34 needs: the kinds
of PI, the cause as established, the possible harm, the measures taken, what
residents can do, the contact point, and the 72-hour clock from detection. It
holds no PI: counts, region names, field kinds, opaque export ids and
principal names. Which residents are affected stays in the vault
(:func:`pivault.leak.check.affected`). The HTML is self-contained (inline SVG,
no scripts, no external assets) so it can be mailed or archived as is.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pivault.leak.check import load_case
from pivault.policy.context import AccessContext

if TYPE_CHECKING:
    from pivault.vault import Vault

__all__ = ["HARMS", "build_report", "write_report"]

#: the possible harm of each kind of PI exposed
HARMS: dict[str, str] = {
    "id_number": "identity theft and fraudulent registration (accounts, SIM cards, loans) in the "
                 "residents' names; the number also reveals birth date, sex and place of registration",
    "name": "targeted fraud and social engineering when combined with the other fields",
    "mobile": "scam and phishing calls and messages that quote the leaked data to seem genuine; "
              "SIM-swap attempts",
    "address": "physical risk (stalking, harassment, burglary) and convincing postal fraud",
    "birth_date": "answers to identity-check questions; with the name, re-identification",
    "gender": "re-identification when combined with the other fields",
    "notes": "disclosure of case records, possibly sensitive PI (PIPL art. 28): discrimination, "
             "reputational and legal harm",
}
RESIDENT_ADVICE = (
    "Treat calls and messages that quote your personal details with suspicion; the police and banks "
    "never ask for passwords or transfers by phone.",
    "Ask your carrier to lock your SIM against transfer, and your bank to flag your accounts.",
    "Check your credit report for accounts or loans you did not open.",
    "You may ask the data handler to tell you what was exposed about you and to correct or delete "
    "it (PIPL art. 44-47).",
)
DEFAULT_MEASURES = (
    "Case opened and the dump matched against the vault without decrypting any record; residents "
    "named without an ID number were counted by the province of their record inside the vault.",
    "Affected residents identified inside the vault; notification prepared by a notifying role.",
)


def _ts(t: float | None) -> str:
    if not t:
        return ""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_report(vault: Vault, case_id: str, *, ctx: AccessContext, contact: str,
                 measures: Sequence[str] = (), now: float | None = None) -> dict[str, Any]:
    """The report's content (the JSON twin); audited as a read of the case summary."""
    vault.guard.authorise(ctx, "stats", ())
    case = load_case(vault, case_id)
    now = time.time() if now is None else now
    detected = float(case["detected_at"])
    deadline = detected + 72 * 3600
    attribution = case.get("attribution") or {}
    named = [f for f in attribution.get("findings", []) if f.get("named")]
    cause = [_cause(f) for f in named] or [
        "not established: " + str(attribution.get("summary", "no source could be named"))]
    fields = list(case.get("fields_exposed", []))
    vault.guard.audit(ctx, "leak.report", (), "ok")
    return {
        "case_id": case_id,
        "generated_at": _ts(now),
        "detected_at": _ts(detected),
        "notification_deadline": _ts(deadline),
        "hours_left": round((deadline - now) / 3600, 1),
        "deadline_passed": now > deadline,
        "is_ours": case.get("is_ours"),
        "residents_affected": case.get("residents_matched", 0),
        "rows_in_dump": case.get("rows_read", 0),
        "rows_matched": case.get("rows_matched", 0),
        "expected_chance_matches": round(float(case.get("expected_false", 0.0)), 2),
        "kinds_of_pi": fields,
        "residents_by_field": case.get("residents_by_field", {}),
        "residents_by_region": case.get("residents_by_region", {}),
        "cause": cause,
        "attribution": attribution,
        "possible_harm": {f: HARMS[f] for f in fields if f in HARMS},
        "measures_taken": list(DEFAULT_MEASURES) + [m for m in measures if m.strip()],
        "what_residents_can_do": list(RESIDENT_ADVICE),
        "contact_point": contact,
        "timeline": [{"time": _ts(e["time"]), "event": e["event"]} for e in case.get("timeline", [])],
        "files": case.get("files", []),
        "errors": case.get("errors", []),
        "canaries": {"exports": case.get("export_canaries", {}), "vault": case.get("vault_canaries", {})},
    }


def _cause(f: dict[str, Any]) -> str:
    ev = f.get("evidence", {})
    if f["kind"] == "export":
        share = round(100 * float(ev.get("containment", 0)), 1)
        return (f"export {f['source']} to {ev.get('recipient')} (purpose: {ev.get('purpose')}; "
                f"requested by {ev.get('requester')}, approved by {ev.get('approver')}): "
                f"{ev.get('canaries_found')} of its canaries are in the dump and {share} % of the "
                f"matched residents were in it [{f['strength']}]")
    if f["kind"] == "principal":
        share = round(100 * float(ev.get("containment", 0)), 1)
        return (f"principal {f['source']}: {share} % of the matched "
                f"residents are among the {ev.get('records_read')} records the audit trail shows it read "
                f"(chance p <= {float(f.get('p_value', 1)):.1e}) [{f['strength']}]")
    return (f"the store itself: {ev.get('never_served')} vault canaries never served through the door are "
            f"in the dump — a copy of the database files, a backup or a dump was taken [{f['strength']}]")


# ---------------------------------------------------------------- HTML

# region names are Chinese: name the common CJK faces before the generic family, or a reader
# whose default sans-serif lacks them sees empty boxes
_FONTS = ('system-ui,"Noto Sans CJK SC","Source Han Sans SC","PingFang SC","Microsoft YaHei",'
          '"WenQuanYi Micro Hei",sans-serif')
_CSS = """body{font-family:%FONTS%;max-width:60rem;margin:2rem auto;color:#222;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #eee;text-align:left}
.clock{font-size:1.2rem;padding:.6rem;border:2px solid #b00;display:inline-block}
.ok{border-color:#070}.muted{color:#666}svg text{font-family:%FONTS%;font-size:12px}"""
_CSS = _CSS.replace("%FONTS%", _FONTS)


def _bars(data: dict[str, int], title: str, color: str) -> str:
    items = sorted(data.items(), key=lambda kv: (-kv[1], kv[0]))[:40]
    if not items:
        return f"<p class='muted'>{html.escape(title)}: none</p>"
    top = max(v for _, v in items) or 1
    row, label_w, bar_w = 20, 150, 420
    height = row * len(items) + 30
    parts = [f"<svg role='img' aria-label='{html.escape(title)}' width='{label_w + bar_w + 80}' "
             f"height='{height}' xmlns='http://www.w3.org/2000/svg'>",
             f"<text x='0' y='14' font-weight='bold'>{html.escape(title)}</text>"]
    for i, (k, v) in enumerate(items):
        y = 24 + i * row
        w = max(1, int(bar_w * v / top))
        parts.append(f"<text x='{label_w - 6}' y='{y + 13}' text-anchor='end'>{html.escape(str(k))}</text>"
                     f"<rect x='{label_w}' y='{y}' width='{w}' height='{row - 5}' fill='{color}'/>"
                     f"<text x='{label_w + w + 4}' y='{y + 13}'>{v}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _timeline_svg(events: list[dict[str, Any]], raw: list[dict[str, Any]]) -> str:
    if not raw:
        return ""
    times = [float(e["time"]) for e in raw]
    lo, hi = min(times), max(times)
    span = (hi - lo) or 1.0
    width, row = 900, 22
    height = 40 + row * len(raw)
    parts = [f"<svg role='img' aria-label='timeline' width='{width}' height='{height}' "
             "xmlns='http://www.w3.org/2000/svg'>",
             f"<line x1='20' y1='20' x2='{width - 20}' y2='20' stroke='#888'/>"]
    for i, (e, r) in enumerate(zip(events, raw, strict=True)):
        x = 20 + (width - 40) * (float(r["time"]) - lo) / span
        y = 40 + i * row
        color = "#b00" if "deadline" in e["event"] else "#036"
        parts.append(f"<circle cx='{x:.1f}' cy='20' r='5' fill='{color}'/>"
                     f"<line x1='{x:.1f}' y1='20' x2='{x:.1f}' y2='{y - 4}' stroke='#ccc'/>"
                     # labels right of the middle end at their point, so none runs off the edge
                     f"<text x='{x:.1f}' y='{y}' text-anchor='{'end' if x > width / 2 else 'start'}'>"
                     f"{html.escape(e['time'])} — {html.escape(e['event'])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def render_html(report: dict[str, Any], raw_timeline: list[dict[str, Any]]) -> str:
    r = report
    e = html.escape
    harm = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in r["possible_harm"].items())
    findings = "".join(
        f"<tr><td>{e(f['kind'])}</td><td>{e(str(f['source']))}</td><td>{e(f['strength'])}</td>"
        f"<td>{'named' if f['named'] else 'not named'}</td><td>{f['p_value']:.2g}</td>"
        f"<td>{e(str(f['evidence'].get('why_not_named', '')))}</td></tr>"
        for f in r["attribution"].get("findings", []))
    files = "".join(f"<tr><td>{e(str(f['file']))}</td><td>{f['rows']}</td>"
                    f"<td>{e(str(f['error'] or ''))}</td></tr>" for f in r["files"])
    kinds = e(", ".join(r["kinds_of_pi"]) or "none found")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Breach report {e(r['case_id'])}</title>
<style>{_CSS}</style></head><body>
<h1>Personal information breach report — case {e(r['case_id'])}</h1>
<p class="muted">Generated {e(r['generated_at'])}. For notices under PIPL art. 57 and GDPR art. 33/34.
This report holds no personal information; the list of affected residents stays in the vault.</p>
<p class="clock">Detected {e(r['detected_at'])} — notify by <b>{e(r['notification_deadline'])}</b>
({'deadline passed' if r['deadline_passed'] else str(r['hours_left']) + ' hours left'})</p>
<h2>Summary</h2>
<table><tr><th>residents of this vault affected</th><td>{r['residents_affected']}</td></tr>
<tr><th>rows in the dump</th><td>{r['rows_in_dump']}</td></tr>
<tr><th>rows matched to residents</th><td>{r['rows_matched']}
 <span class="muted">(chance matches expected: {r['expected_chance_matches']})</span></td></tr>
<tr><th>kinds of personal information</th><td>{kinds}</td></tr></table>
<h2>Cause, as established</h2>{_list(r['cause'])}
<table><tr><th>kind</th><th>source</th><th>strength</th><th></th><th>p (chance)</th><th>note</th></tr>
{findings}</table>
<h2>Affected residents</h2>
{_bars(r['residents_by_region'], 'affected residents by region', '#036')}
{_bars(r['residents_by_field'], 'affected residents by field exposed', '#a50')}
<h2>Timeline</h2>{_timeline_svg(r['timeline'], raw_timeline)}
<h2>Possible harm</h2><table>{harm}</table>
<h2>Measures taken</h2>{_list(r['measures_taken'])}
<h2>What residents can do</h2>{_list(r['what_residents_can_do'])}
<h2>Contact point</h2><p>{e(r['contact_point'])}</p>
<h2>Files examined</h2><table><tr><th>file</th><th>rows</th><th>problem</th></tr>{files}</table>
</body></html>
"""


def write_report(vault: Vault, case_id: str, out_dir: str | Path, *, ctx: AccessContext, contact: str,
                 measures: Sequence[str] = (), now: float | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` for a case into ``out_dir``; return both paths."""
    report = build_report(vault, case_id, ctx=ctx, contact=contact, measures=measures, now=now)
    raw = load_case(vault, case_id).get("timeline", [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "report.html", out / "report.json"
    html_path.write_text(render_html(report, raw), encoding="utf-8")
    json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str) + "\n",
                         encoding="utf-8")
    return html_path, json_path
