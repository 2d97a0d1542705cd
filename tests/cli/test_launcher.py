"""The `stepline` launcher `make install` writes (scripts/install_launcher.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install_launcher.sh"


def _checkout(path: Path, says: str) -> Path:
    cli = path / ".venv" / "bin" / "stepline"
    cli.parent.mkdir(parents=True)
    cli.write_text(f'#!/bin/sh\necho {says} "$@"\n')
    cli.chmod(0o755)
    return path


def _install(bin_dir: Path, checkout: Path) -> None:
    subprocess.run(
        ["sh", str(SCRIPT), str(bin_dir), str(checkout)], check=True, capture_output=True
    )


def _run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "stepline"), "runs", "list"], capture_output=True, text=True, check=False
    )


def test_the_launcher_falls_back_to_an_earlier_checkout_when_the_newest_is_deleted(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    kept = _checkout(tmp_path / "kept", "kept")
    clone = _checkout(tmp_path / "clone", "clone")
    _install(bin_dir, kept)
    _install(bin_dir, clone)  # a clean clone's `make install`, deleted afterwards
    assert _run(bin_dir).stdout == "clone runs list\n"
    subprocess.run(["rm", "-r", str(clone)], check=True)
    assert _run(bin_dir).stdout == "kept runs list\n"
    subprocess.run(["rm", "-r", str(kept)], check=True)
    gone = _run(bin_dir)
    assert gone.returncode == 127
    assert "run `make install` in yours" in gone.stderr
