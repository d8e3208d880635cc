"""Policy reload without restart reaches every worker; an invalid file changes nothing."""

from __future__ import annotations

from pathlib import Path

from api_support import Live
from test_api_auth import assert_clean_problem


def _lookup_status(live: Live, purpose: str) -> int:
    with live.client(live.tokens["dpo"], purpose=purpose) as c:  # a new connection each time
        return c.post("/v1/residents/lookup", json={"id_number": live.residents[0]["id_number"]}).status_code


def test_reload_applies_on_every_worker_and_refuses_invalid_files(live: Live) -> None:
    policy_file = live.home.parent / "policy.toml"
    original = policy_file.read_text(encoding="utf-8")
    try:
        # the dpo may not look up for "audit" once the policy says so
        narrowed = original.replace('purposes = ["data_subject_request", "audit"]',
                                    'purposes = ["data_subject_request"]', 1)
        assert narrowed != original
        assert all(_lookup_status(live, "audit") == 200 for _ in range(4))
        _write(policy_file, narrowed)
        with live.client(role="admin") as admin:
            r = admin.post("/v1/admin/policy/reload")
            assert r.status_code == 200, r.text
            assert {x["role"] for x in r.json()["roles"]} >= {"officer", "dpo", "admin"}
        assert all(_lookup_status(live, "audit") == 403 for _ in range(8))
        # an invalid file is refused, and the running policy stays as it was
        _write(policy_file, original.replace('operations = ["lookup", "read"]',
                                             'operations = ["lookup", "steal"]'))
        with live.client(role="admin") as admin:
            problem = assert_clean_problem(admin.post("/v1/admin/policy/reload"), live, 422)
        assert problem["code"] == "policy.invalid" and "steal" in problem["detail"]
        assert all(_lookup_status(live, "audit") == 403 for _ in range(4))
        # so is one that shows the officer the county beside the number's sequence and check character
        _write(policy_file, original.replace('id_number = "id_number_ends"', 'id_number = "mask"', 1)
               .replace('region_code = "region_province"', 'region_code = "none"', 1))
        with live.client(role="admin") as admin:
            problem = assert_clean_problem(admin.post("/v1/admin/policy/reload"), live, 422)
        assert problem["code"] == "policy.id_rebuild"
        assert problem["detail"].startswith("roles.officer, purpose 'identity_verification': ")
        assert all(_lookup_status(live, "audit") == 403 for _ in range(4))
        assert _lookup_status(live, "data_subject_request") == 200
    finally:
        _write(policy_file, original)
        with live.client(role="admin") as admin:
            assert admin.post("/v1/admin/policy/reload").status_code == 200
    assert all(_lookup_status(live, "audit") == 200 for _ in range(4))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_every_worker_takes_the_policy_the_reload_validated(tmp_path: Path) -> None:
    """Two workers' holders over one policy file and one reload marker.

    A worker that serves no request between a reload and a later edit of the file must
    take what was reloaded, not the edit nobody reloaded (a broader policy, or one it
    would refuse and so stay on the policy from before the reload).
    """
    from pivault.api.app import PolicyHolder
    from pivault.policy import Policy

    original = Policy.default_text()
    narrowed = original.replace('purposes = ["data_subject_request", "audit"]',
                                'purposes = ["data_subject_request"]', 1)
    broader = original.replace('purposes = ["data_subject_request", "audit"]',
                               'purposes = ["data_subject_request", "audit", "identity_verification"]', 1)
    assert narrowed != original and broader != original
    path, marker = tmp_path / "policy.toml", tmp_path / "run" / "policy.reload"
    marker.parent.mkdir()
    _write(path, original)
    a, b, c = (PolicyHolder(Policy.load(path), path=path, marker=marker) for _ in range(3))
    _write(path, narrowed)
    assert a.reload().purposes_for("dpo") == ("data_subject_request",)
    invalid = original.replace('operations = ["lookup", "read"]', 'operations = ["lookup", "steal"]')
    for worker, edit in ((b, broader), (c, invalid)):
        _write(path, edit)  # edited after the reload, and not reloaded
        assert worker.current().purposes_for("dpo") == ("data_subject_request",)
    assert (marker.stat().st_mode & 0o777) == 0o600
    # the next reload of a valid file reaches the other worker as it was validated
    _write(path, broader)
    a.reload()
    _write(path, original)
    assert "identity_verification" in b.current().purposes_for("dpo")
