"""Run ids: derived from tenant and idempotency key so a retried submission is the same run."""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["derive_run_id", "new_run_id"]


def derive_run_id(tenant_id: str, idempotency_key: str) -> str:
    """The run id of a goal with an idempotency key: the same for every resubmission."""
    digest = hashlib.sha256(f"{tenant_id}\x1f{idempotency_key}".encode()).hexdigest()
    return f"run-{digest[:32]}"


def new_run_id() -> str:
    """A fresh run id for a goal submitted without an idempotency key."""
    return f"run-{uuid.uuid4().hex}"
