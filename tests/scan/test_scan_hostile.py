"""What a file share can hold to mislead or stop a sweep: links out of it, compressed tables."""

from __future__ import annotations

import os
from pathlib import Path

from pivault.scan import ScanOptions, ScanReport, scan_paths
from pivault.synth import generate


def _person(seed: int) -> dict[str, str]:
    return {k: str(v) for k, v in next(r for r in generate(20, seed) if r["mobile"]).items()}


def _scan(*paths: Path) -> ScanReport:
    return scan_paths([str(p) for p in paths], ScanOptions(workers=1))


def test_links_out_of_the_scanned_tree_are_not_followed(tmp_path: Path) -> None:
    """A link planted in a share (to /, to /proc/kmsg, to another team's export) took the sweep out
    of the share: over the whole machine, or into a read that never returns."""
    inside, outside = _person(81), _person(82)
    share, elsewhere = tmp_path / "share", tmp_path / "elsewhere"
    (share / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (share / "sub" / "export.csv").write_text(f"身份证号\n{inside['id_number']}\n", encoding="utf-8")
    (elsewhere / "other.csv").write_text(f"身份证号\n{outside['id_number']}\n", encoding="utf-8")
    (share / "to_dir").symlink_to(elsewhere)
    (share / "to_file.csv").symlink_to(elsewhere / "other.csv")
    (share / "to_sub").symlink_to(share / "sub")  # a link within the share is followed as before
    r = _scan(share)
    found = {os.path.relpath(f.file or "", share) for f in r if f.kind == "id_number"}
    assert found == {"sub/export.csv", "to_sub/export.csv"}
    issues = {os.path.basename(i.source): i.code for i in r.issues}
    assert issues == {"to_dir": "symlink_outside", "to_file.csv": "symlink_outside"}
    # named on the command line, the other tree is scanned: the operator chose it
    assert {f.file for f in _scan(share, elsewhere) if f.kind == "id_number"} >= {
        str(elsewhere / "other.csv"), str(share / "to_dir" / "other.csv")}
