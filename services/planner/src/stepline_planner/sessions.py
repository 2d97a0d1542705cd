"""The session owner: one conversation memory per session, lent to one run at a time."""

from __future__ import annotations

from datetime import datetime
from typing import assert_never

from stepline_planner.outputs import (
    SessionTurnEnded,
    SessionTurnGranted,
    SessionTurnRejected,
    SessionTurnRequested,
)
from stepline_planner.profiles import Profiles, SessionBusyPolicy
from stepline_planner.state import Session
from stepline_planner.transcript import bound_memory

__all__ = ["SessionInput", "SessionOutput", "decide_session", "session_key"]

SessionInput = SessionTurnRequested | SessionTurnEnded
SessionOutput = SessionTurnGranted | SessionTurnRejected


def session_key(tenant_id: str, session_id: str) -> str:
    """The key a session lives under (changelog) and its notices travel with (Kafka)."""
    return f"session/{tenant_id}/{session_id}"


def decide_session(
    session: Session | None, event: SessionInput, now: datetime, profiles: Profiles
) -> tuple[Session, list[SessionOutput]]:
    """Grant, queue or reject turns; store the memory a completed run hands back."""
    current = session or Session(event.tenant_id, event.session_id, now)
    if isinstance(event, SessionTurnRequested):
        return _on_requested(current, event, now, profiles)
    if isinstance(event, SessionTurnEnded):
        return _on_ended(current, event, now, profiles)
    assert_never(event)


def _grant(session: Session, run_id: str) -> SessionTurnGranted:
    return SessionTurnGranted(session.tenant_id, session.session_id, run_id, session.memory)


def _on_requested(
    session: Session, event: SessionTurnRequested, now: datetime, profiles: Profiles
) -> tuple[Session, list[SessionOutput]]:
    if event.run_id == session.active_run_id or event.run_id in session.queued_run_ids:
        return session, []
    if not session.active_run_id:
        granted = Session(
            session.tenant_id,
            session.session_id,
            now,
            event.run_id,
            session.queued_run_ids,
            session.memory,
        )
        return granted, [_grant(granted, event.run_id)]
    if profiles.session_busy is SessionBusyPolicy.REJECT:
        reason = f"run {session.active_run_id} is in progress"
        return session, [
            SessionTurnRejected(session.tenant_id, session.session_id, event.run_id, reason)
        ]
    queued = (*session.queued_run_ids, event.run_id)
    return (
        Session(
            session.tenant_id,
            session.session_id,
            now,
            session.active_run_id,
            queued,
            session.memory,
        ),
        [],
    )


def _on_ended(
    session: Session, event: SessionTurnEnded, now: datetime, profiles: Profiles
) -> tuple[Session, list[SessionOutput]]:
    if event.run_id in session.queued_run_ids:
        queued = tuple(r for r in session.queued_run_ids if r != event.run_id)
        return (
            Session(
                session.tenant_id,
                session.session_id,
                now,
                session.active_run_id,
                queued,
                session.memory,
            ),
            [],
        )
    if event.run_id != session.active_run_id:
        return session, []
    memory = (
        bound_memory(event.memory, profiles.session_memory_messages)
        if event.memory_updated
        else session.memory
    )
    active, queued = "", session.queued_run_ids
    if queued:
        active, queued = queued[0], queued[1:]
    updated = Session(session.tenant_id, session.session_id, now, active, queued, memory)
    return updated, [_grant(updated, active)] if active else []
