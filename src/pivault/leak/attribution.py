"""Where did the dump come from? Evidence, a statistical test, and a refusal to guess.

Three kinds of source can be named:

* an **export**: the dump holds canaries of that export (fictitious residents
  that exist only in that one file), and its residents fit inside the
  export's record set;
* a **principal**: the dump's residents fit inside what the audit trail shows
  that principal read through the door, far better than chance allows;
* the **store** itself: the dump holds vault canaries (fictitious residents
  seeded in the store) that were never served through the door, so the copy
  was taken around it — the database files, a backup, a dump.

Naming a source is a claim that can hurt somebody, so each claim is a test
against the null hypothesis "the dump's residents have nothing to do with this
source": under it, a matched resident falls inside a source's set of ``m``
records out of ``R`` with probability ``m / R``, and the chance of the
observed fit is bounded by the Chernoff bound ``exp(-n * KL(x/n || m/R))`` (an
upper bound on the binomial tail, so it errs towards *not* naming). Canary
hits are tested against their expected chance count with a Poisson tail. A
source is named only below :data:`P_NAME`; fits that are notable but weaker
are reported as weak evidence, and nothing is named on weak evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "P_NAME",
    "P_WEAK",
    "Attribution",
    "Finding",
    "SourceFit",
    "attribute",
    "binomial_tail_bound",
    "poisson_tail",
]

#: a source is named when the chance explanation is less likely than this
P_NAME = 1e-9
#: below this (and above P_NAME) the fit is reported as weak evidence
P_WEAK = 1e-3
#: an export or principal must hold at least this share of the matched residents
MIN_CONTAINMENT = 0.9
#: how many matched residents a fit needs before it can name a source
MIN_MATCHED = 10
#: chance that a canary's ID number belongs to some real person (generous: the
#: valid number space is ~10^11, the population ~1.4 * 10^9)
CANARY_ID_COLLISION = 0.02
POPULATION_OF_COUNTRY = 1.4e9


def _kl(q: float, p: float) -> float:
    """Kullback–Leibler divergence of Bernoulli(q) from Bernoulli(p)."""
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def binomial_tail_bound(x: int, n: int, p: float) -> float:
    """An upper bound on P(Binomial(n, p) >= x) (Chernoff–Hoeffding); 1 when x <= n p."""
    if n <= 0 or x <= n * p:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    return min(1.0, math.exp(-n * _kl(x / n, p)))


def poisson_tail(k: int, lam: float) -> float:
    """P(Poisson(lam) >= k), exactly (k small) or by its Chernoff bound."""
    if k <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    if k > 200:
        if k <= lam:
            return 1.0
        return min(1.0, math.exp(-lam + k - k * math.log(k / lam)))
    term = math.exp(-lam)
    cdf = term
    for i in range(1, k):
        term *= lam / i
        cdf += term
    return max(0.0, 1.0 - cdf) if cdf < 1 - 1e-12 else _poisson_upper(k, lam)


def _poisson_upper(k: int, lam: float) -> float:
    # the direct sum lost precision: add the tail terms instead
    term = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1))
    total, i = 0.0, k
    while term > total * 1e-17 and i < k + 10_000:
        total += term
        i += 1
        term *= lam / i
    return min(1.0, total)


@dataclass
class SourceFit:
    """How the dump's matched residents sit in one candidate source."""

    kind: str  # "export", "principal"
    source_id: str
    size: int  # records in the source
    inside: int  # matched residents inside it
    canaries_total: int = 0
    canaries_found: int = 0  # confirmed by two or more exact keys
    canaries_single: int = 0  # one exact key (ID number) only
    label: dict[str, Any] = field(default_factory=dict)
    #: matched residents inside it that a PI value of the dump confirmed (not a record id alone);
    #: ``None``: all of them
    inside_by_value: int | None = None


@dataclass
class Finding:
    """One named (or weakly indicated) source, with its evidence."""

    kind: str  # "export", "principal", "store"
    source_id: str
    strength: str  # "conclusive", "strong", "weak"
    p_value: float
    evidence: dict[str, Any]
    named: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source_id, "strength": self.strength,
                "p_value": self.p_value, "named": self.named, "evidence": self.evidence}


@dataclass
class Attribution:
    verdict: str  # "attributed", "weak", "none", "not_ours"
    summary: str
    findings: list[Finding]

    @property
    def named(self) -> list[Finding]:
        return [f for f in self.findings if f.named]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "summary": self.summary,
                "findings": [f.to_dict() for f in self.findings]}


def _canaries_missed(fit: SourceFit) -> float:
    """The chance that a copy of the export holding ``fit.inside`` of its residents holds none
    of its canaries. A dump of residents who merely live where an export was drawn (an
    officer's reads in one province, another export of it) fits inside every export of that
    region; a copy of the export would almost surely have brought canaries along, so their
    absence speaks against it, and only an export small enough to miss them all is named."""
    from pivault.leak.exports import miss_probability

    return miss_probability(fit.size, fit.canaries_total, sample=max(fit.inside, 1))


def _fit_p(fit: SourceFit, matched: int, population: int) -> float:
    p0 = min(1.0, fit.size / max(population, 1))
    return binomial_tail_bound(fit.inside, matched, p0)


#: why a fit resting on record ids alone names nobody
_IDS_ONLY = ("the fit rests on record ids, and not on the residents a value of the dump confirms: the "
             "store and the audit trail hold the ids in clear, so whoever can read either could have "
             "written them, and they do not show who copied the residents' data")


def _fits(inside: int, matched: int, size: int, population: int) -> bool:
    """Whether ``inside`` of ``matched`` residents in a source of ``size`` passes the naming test."""
    if matched < MIN_MATCHED or inside < MIN_CONTAINMENT * matched:
        return False
    return binomial_tail_bound(inside, matched, min(1.0, size / max(population, 1))) < P_NAME


def _by_value(fit: SourceFit, matched_by_value: int | None, population: int) -> bool:
    """Whether the fit holds on the residents the dump's PI values confirm, without those a
    record id alone confirmed.

    A record id is random, so chance cannot put one in a dump; but the ids are no secret of
    the door: the store holds them in clear and the audit trail lists, in clear, which ids each
    principal and each export fetch was served. A list of ids taken from either fits its source
    perfectly while holding nothing of the residents, and would frame it.
    """
    if matched_by_value is None or fit.inside_by_value is None:
        return True
    return _fits(fit.inside_by_value, matched_by_value, fit.size, population)


def attribute(*, matched: int, population: int, dump_rows: int, exports: Sequence[SourceFit],
              principals: Sequence[SourceFit], vault_canaries_found: int,
              vault_canaries_unserved: int, vault_canaries_total: int,
              expected_false_per_row: float, matched_by_value: int | None = None) -> Attribution:
    """Weigh the evidence for every candidate source; name only what passes the test.

    ``matched`` counts distinct confirmed residents; ``matched_by_value`` those of them a PI
    value of the dump confirmed (``None``: all), as a fit on record ids alone names nobody
    (:func:`_by_value`); ``expected_false_per_row`` is the chance rate of a confirmation per
    dump row (from the index lengths), which bounds how many vault canaries could match by
    chance.
    """
    findings: list[Finding] = []
    # -- exports: canaries first, then containment ------------------------------------
    for fit in exports:
        contain = fit.inside / matched if matched else 0.0
        p_fit = _fit_p(fit, matched, population)
        chance_single = (fit.canaries_total * CANARY_ID_COLLISION
                         * min(1.0, dump_rows / POPULATION_OF_COUNTRY))
        p_single = poisson_tail(fit.canaries_single, chance_single)
        evidence = {"canaries_found": fit.canaries_found, "canaries_single_key": fit.canaries_single,
                    "canaries_in_export": fit.canaries_total, "export_records": fit.size,
                    "matched_inside": fit.inside, "containment": round(contain, 4),
                    "p_containment": p_fit, **fit.label}
        if fit.inside_by_value is not None:
            evidence["matched_inside_by_value"] = fit.inside_by_value
        # a fit chance cannot explain, from too small a sample to be sure to hold a canary
        small_fit = (matched >= MIN_MATCHED and contain >= MIN_CONTAINMENT and p_fit < P_NAME
                     and dump_rows < 200 and _canaries_missed(fit) >= P_WEAK)
        if fit.canaries_found > 0:
            # fictitious people, unique to this file, matched on two exact keys: no chance path
            findings.append(Finding("export", fit.source_id, "conclusive", 0.0, evidence, True))
        elif fit.canaries_single > 0 and p_single < P_NAME:
            findings.append(Finding("export", fit.source_id, "strong", p_single, evidence, True))
        elif small_fit and _by_value(fit, matched_by_value, population):
            findings.append(Finding("export", fit.source_id, "strong", p_fit, evidence, True))
        elif small_fit:
            evidence["why_not_named"] = _IDS_ONLY
            findings.append(Finding("export", fit.source_id, "weak", min(p_fit, p_single), evidence, False))
        elif (matched >= MIN_MATCHED and p_fit < P_WEAK) or fit.canaries_single > 0:
            evidence["why_not_named"] = (
                "the residents fit this export's selection, but the dump holds none of its canaries"
                if fit.canaries_single == 0 else "a canary matched on one key only")
            findings.append(Finding("export", fit.source_id, "weak", min(p_fit, p_single), evidence, False))
    named_exports = {f.source_id for f in findings if f.named}
    # -- principals: fit against what the audit trail shows they read -------------------
    for fit in principals:
        contain = fit.inside / matched if matched else 0.0
        p_fit = _fit_p(fit, matched, population)
        evidence = {"records_read": fit.size, "matched_inside": fit.inside,
                    "containment": round(contain, 4), "p_containment": p_fit, **fit.label}
        if fit.inside_by_value is not None:
            evidence["matched_inside_by_value"] = fit.inside_by_value
        exports_of = set(fit.label.get("exports", ()))
        if exports_of & named_exports:
            evidence["why_not_named"] = "the reads are the named export's fetch"
            findings.append(Finding("principal", fit.source_id, "weak", p_fit, evidence, False))
        elif (matched >= MIN_MATCHED and contain >= MIN_CONTAINMENT and p_fit < P_NAME
              and not _by_value(fit, matched_by_value, population)):
            evidence["why_not_named"] = _IDS_ONLY
            findings.append(Finding("principal", fit.source_id, "weak", p_fit, evidence, False))
        elif matched >= MIN_MATCHED and contain >= MIN_CONTAINMENT and p_fit < P_NAME:
            strength = "strong" if contain >= 0.99 else "moderate"
            findings.append(Finding("principal", fit.source_id, strength, p_fit, evidence, True))
        elif matched >= MIN_MATCHED and p_fit < P_WEAK:
            evidence["why_not_named"] = "the fit is notable but not beyond chance at the naming level"
            findings.append(Finding("principal", fit.source_id, "weak", p_fit, evidence, False))
    # -- the store: vault canaries never served -----------------------------------------
    if vault_canaries_found:
        lam = expected_false_per_row * dump_rows * (vault_canaries_total / max(population, 1))
        p_store = poisson_tail(vault_canaries_unserved, lam)
        evidence = {"vault_canaries_found": vault_canaries_found,
                    "never_served": vault_canaries_unserved,
                    "vault_canaries_total": vault_canaries_total,
                    "expected_by_chance": lam, "p_chance": p_store}
        if vault_canaries_unserved and p_store < P_NAME:
            strength = "conclusive" if p_store < 1e-15 else "strong"
            findings.append(Finding("store", "store", strength, p_store, evidence, True))
        else:
            evidence["why_not_named"] = ("the canaries found were served through the door"
                                         if not vault_canaries_unserved else
                                         "as many canaries could match by chance")
            findings.append(Finding("store", "store", "weak", p_store, evidence, False))
    named = [f for f in findings if f.named]
    if matched == 0 and not named:
        return Attribution("not_ours", "no row of the dump is confirmed as a resident of this vault",
                           findings)
    if named:
        parts = [f"{f.kind} {f.source_id} ({f.strength})" for f in named]
        return Attribution("attributed", "most likely source: " + ", ".join(parts), findings)
    if findings:
        return Attribution("weak", "the evidence is weak: no source can be named; see the findings",
                           findings)
    return Attribution("none", "the residents are in this vault, but no export, principal or the "
                       "store is indicated as the source", findings)
