"""Ids: run ids derived from tenant and idempotency key, and the rule every tenant id follows."""

from __future__ import annotations

import hashlib
import re
import uuid

__all__ = [
    "REPLAY_RUN_PREFIXES",
    "TENANT_ID_MAX_LENGTH",
    "derive_replay_run_id",
    "derive_run_id",
    "is_replay_run",
    "new_run_id",
    "tenant_id_problem",
]

TENANT_ID_MAX_LENGTH = 64
# Tenant ids become Kafka keys, header values, metric labels and file names: lower-case letters,
# digits, '.', '_' and '-', starting with a letter or digit (so "Acme" and "acme" are not two).
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")


def derive_run_id(tenant_id: str, idempotency_key: str) -> str:
    """The run id of a goal with an idempotency key: the same for every resubmission."""
    digest = hashlib.sha256(f"{tenant_id}\x1f{idempotency_key}".encode()).hexdigest()
    return f"run-{digest[:32]}"


# Replays and forks live in their own namespace of run ids, so every consumer (billing's
# evaluation spend, run listings) tells them from production runs by the id alone.
REPLAY_RUN_PREFIXES = ("replay-", "fork-")


def derive_replay_run_id(
    tenant_id: str, original_run_id: str, settings_hash: str, *, fork: bool = False
) -> str:
    """The run id of a replay (or fork): the same run and settings always give the same id."""
    seed = f"{tenant_id}\x1f{original_run_id}\x1f{settings_hash}"
    prefix = REPLAY_RUN_PREFIXES[1] if fork else REPLAY_RUN_PREFIXES[0]
    return f"{prefix}{hashlib.sha256(seed.encode()).hexdigest()[:32]}"


def is_replay_run(run_id: str) -> bool:
    """Whether `run_id` names a replay or fork (or a child run one of them started)."""
    return run_id.startswith(REPLAY_RUN_PREFIXES)


def new_run_id() -> str:
    """A fresh run id for a goal submitted without an idempotency key."""
    return f"run-{uuid.uuid4().hex}"


def tenant_id_problem(tenant_id: str) -> str | None:
    """Why `tenant_id` is not a valid tenant id, or None when it is."""
    if not tenant_id:
        return "tenant_id is required"
    if len(tenant_id) > TENANT_ID_MAX_LENGTH:
        return f"tenant_id is longer than {TENANT_ID_MAX_LENGTH} characters"
    if not _TENANT_ID.fullmatch(tenant_id):
        return (
            f"tenant_id {tenant_id!r} may hold only lower-case letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return None
