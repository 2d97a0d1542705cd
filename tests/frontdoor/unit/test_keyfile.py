"""The key file: fingerprints only, round trips any label, refuses what it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepline_frontdoor.keyfile import StaticAuthenticator, add_key, fingerprint, main
from stepline_keys import Principal, Scope, UnauthenticatedError


def test_issued_keys_authenticate_and_only_their_fingerprint_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    principal = Principal("k1", "acme", frozenset({Scope.RUNS_READ}), label='Ann "the approver" \\')
    secret = add_key(path, principal)
    text = path.read_text()
    assert secret not in text
    assert fingerprint(secret) in text
    assert StaticAuthenticator.from_file(path).authenticate(secret) == principal
    with pytest.raises(UnauthenticatedError, match="unknown"):
        StaticAuthenticator.from_file(path).authenticate(secret + "x")
    with pytest.raises(UnauthenticatedError, match="missing"):
        StaticAuthenticator.from_file(path).authenticate(None)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_file_has_no_keys_and_a_bad_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnauthenticatedError):
        StaticAuthenticator.from_file(tmp_path / "none.toml").authenticate("sk-x")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nid = "k"\nsha256 = "ab"\ntenant = "t"\nscopes = ["fly"]\n')
    with pytest.raises(ValueError, match="bad \\[\\[keys\\]\\] entry"):
        StaticAuthenticator.from_file(bad)


def test_the_command_prints_the_secret_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    assert main(["issue", "--file", str(path), "--tenant", "demo", "--scope", "admin"]) == 0
    secret = capsys.readouterr().out.strip()
    assert StaticAuthenticator.from_file(path).authenticate(secret).has(Scope.APPROVALS_DECIDE)
