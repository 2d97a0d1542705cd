"""Resolve the broker jars from Maven Central, cached by a hash of deploy/kafka/pom.xml."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .errors import LocalKafkaError
from .locking import file_lock

__all__ = ["MAVEN_DEPENDENCY_GOAL", "ensure_jars", "jars_current", "pom_digest"]

MAVEN_DEPENDENCY_GOAL = "dependency:copy-dependencies"
STAMP_NAME = ".pom.sha256"


def pom_digest(pom: Path) -> str:
    """SHA-256 of the pom file; a changed pom means the jars must be resolved again."""
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_current(pom: Path, lib_dir: Path) -> bool:
    """True if ``lib_dir`` holds jars resolved from exactly this pom."""
    stamp = lib_dir / STAMP_NAME
    if not stamp.is_file() or not any(lib_dir.glob("*.jar")):
        return False
    return stamp.read_text().strip() == pom_digest(pom)


def _remove_jar_dir(lib_dir: Path) -> None:
    """Delete a jar directory, refusing if it holds anything but jars and our stamp."""
    if not lib_dir.exists():
        return
    foreign = [p.name for p in lib_dir.iterdir() if p.suffix != ".jar" and p.name != STAMP_NAME]
    if foreign:
        raise LocalKafkaError(
            f"{lib_dir} holds files other than jars ({', '.join(sorted(foreign)[:5])}); "
            "refusing to replace it. Point STEPLINE_KAFKA_LIB_DIR / --lib-dir at a directory "
            "used only for the Kafka jars."
        )
    shutil.rmtree(lib_dir)


def ensure_jars(pom: Path, lib_dir: Path) -> bool:
    """Resolve the jars into ``lib_dir`` unless already current; True if Maven ran."""
    if not pom.is_file():
        raise LocalKafkaError(f"{pom} not found (check --deploy-dir)")
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lib_dir.with_name(lib_dir.name + ".lock")):
        if jars_current(pom, lib_dir):
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError(
                "Maven (mvn) is not on PATH; install Maven 3.8+ to resolve the Kafka jars "
                "(e.g. apt-get install maven), or set STEPLINE_KAFKA_LIB_DIR to a directory "
                "that already holds them"
            )
        digest = pom_digest(pom)
        staging = lib_dir.with_name(lib_dir.name + ".staging")
        if staging.exists():
            shutil.rmtree(staging)
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            MAVEN_DEPENDENCY_GOAL,
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CI": "true"},
            check=False,
        )
        if result.returncode != 0 or not any(staging.glob("*.jar")):
            tail = "\n".join(result.stdout.splitlines()[-30:])
            raise LocalKafkaError(
                f"resolving the Kafka jars failed (exit {result.returncode}):\n"
                f"  {' '.join(command)}\n{tail}"
            )
        (staging / STAMP_NAME).write_text(digest + "\n")
        _remove_jar_dir(lib_dir)
        staging.rename(lib_dir)
        return True
