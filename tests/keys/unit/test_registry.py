"""Secrets, the fold of key events and the registry as an Authenticator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from stepline.v1 import keys_pb2
from stepline_keys import Grant, KeyRegistry, Limits, Scope, UnauthenticatedError
from stepline_keys.access import PermissionDeniedError, is_loopback_host, require_origin
from stepline_keys.admin import issue, revoke, rotate, update
from stepline_keys.convert import ConversionError, event_from_proto, event_to_proto
from stepline_keys.feeds import InMemoryKeyLog
from stepline_keys.grpcdoor import bearer, call_metadata, is_loopback_peer
from stepline_keys.secret import PREFIX, hash_secret, key_id_of, secret_matches

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRANT = Grant(frozenset({Scope.MODELS_CALL}), routes=frozenset({"fast"}), label="ci")


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def test_secret_has_prefix_key_id_and_256_bits_and_only_its_hash_is_kept() -> None:
    new = issue("acme", GRANT, actor="ops", now=NOW)
    assert new.secret.startswith(PREFIX + new.key_id + "_")
    assert len(new.secret.split("_", 2)[2]) == 43  # 32 bytes, base64url without padding
    assert key_id_of(new.secret) == new.key_id
    wire = event_to_proto(new.event, "USD").SerializeToString()
    assert new.secret.encode() not in wire
    assert new.secret not in repr(new)
    assert new.secret not in repr(new.event)
    assert secret_matches(new.secret, hash_secret(new.secret))
    assert not secret_matches(new.secret + "x", hash_secret(new.secret))
    assert key_id_of("sk-stl-nonsense") is None


def test_registry_authenticates_and_refuses_wrong_unknown_missing_expired_revoked() -> None:
    clock = Clock()
    expiring = Grant(frozenset({Scope.RUNS_READ}), expires_at=NOW + timedelta(hours=1))
    good = issue("acme", GRANT, actor="ops", now=NOW)
    short = issue("acme", expiring, actor="ops", now=NOW)
    registry = KeyRegistry(clock, [good.event, short.event])

    principal = registry.authenticate(good.secret)
    assert (principal.tenant_id, principal.key_id) == ("acme", good.key_id)
    assert principal.may_use_route("fast")
    assert not principal.may_use_route("reasoning")

    forged = good.secret[:-4] + ("AAAA" if not good.secret.endswith("AAAA") else "BBBB")
    for bad in (None, "", "Bearer", forged, "sk-stl-key_0000000000000000_" + "A" * 43):
        with pytest.raises(UnauthenticatedError):
            registry.authenticate(bad)

    assert registry.authenticate(short.secret).tenant_id == "acme"
    clock.now = NOW + timedelta(hours=1)
    with pytest.raises(UnauthenticatedError):
        registry.authenticate(short.secret)

    registry.apply(revoke(good.key_id, actor="ops", now=clock.now, reason="leaked"))
    with pytest.raises(UnauthenticatedError) as refused:
        registry.authenticate(good.secret)
    # One text for every refusal: nothing says which keys exist.
    assert str(refused.value) == "missing, unknown, expired or revoked API key"
    assert registry.get(good.key_id) is not None
    assert registry.get(good.key_id).revoked_by == "ops"  # type: ignore[union-attr]


def test_update_rotate_and_a_replayed_issue_change_what_they_should() -> None:
    clock = Clock()
    first = issue("acme", GRANT, actor="ops", now=NOW)
    registry = KeyRegistry(clock, [first.event])
    key = registry.get(first.key_id)
    assert key is not None
    wider = Grant(frozenset({Scope.MODELS_CALL, Scope.USAGE_READ}), limits=Limits(rpm=5))
    registry.apply(update(key, wider, actor="ops", now=NOW))
    assert registry.authenticate(first.secret).has(Scope.USAGE_READ)
    assert registry.limits(first.key_id).rpm == 5

    # A second KeyIssued for the same id (replay or forgery) does not replace the hash.
    other = issue("evil", GRANT, actor="x", now=NOW)
    registry.apply(type(other.event)(first.key_id, "x", NOW, other.event.change))
    assert registry.authenticate(first.secret).tenant_id == "acme"

    key = registry.get(first.key_id)
    assert key is not None
    fresh, revoked = rotate(key, actor="ops", now=NOW)
    registry.apply(fresh.event)
    registry.apply(revoked)
    assert registry.authenticate(fresh.secret).has(Scope.USAGE_READ)
    assert registry.get(fresh.key_id).rotated_from == first.key_id  # type: ignore[union-attr]
    with pytest.raises(UnauthenticatedError):
        registry.authenticate(first.secret)
    # An update after revocation does not revive the key.
    registry.apply(update(key, wider, actor="ops", now=NOW))
    with pytest.raises(UnauthenticatedError):
        registry.authenticate(first.secret)


def test_events_round_trip_and_bad_ones_are_refused() -> None:
    limited = Grant(
        frozenset({Scope.GOALS_SUBMIT, Scope.RUNS_READ}),
        agents=frozenset({"support"}),
        limits=Limits(daily_spend=Decimal("5.00"), rpm=60, tpm=1000),
        expires_at=NOW + timedelta(days=30),
        label="upstream",
    )
    new = issue("acme", limited, actor="ops", now=NOW, loopback_only=True)
    back = event_from_proto(event_to_proto(new.event, "USD"))
    assert back == new.event
    with pytest.raises(ConversionError):
        event_from_proto(keys_pb2.KeyEvent(key_id="k"))
    bad_scope = event_to_proto(new.event, "USD")
    bad_scope.issued.grant.scopes.append("root")
    with pytest.raises(ConversionError):
        event_from_proto(bad_scope)


def test_principal_scopes_and_tenant() -> None:
    new = issue("acme", GRANT, actor="ops", now=NOW)
    principal = KeyRegistry(Clock(), [new.event]).authenticate(new.secret)
    principal.require(Scope.MODELS_CALL)
    with pytest.raises(PermissionDeniedError):
        principal.require(Scope.USAGE_READ)
    assert principal.tenant_for("") == "acme" == principal.tenant_for("acme")
    with pytest.raises(PermissionDeniedError):
        principal.tenant_for("globex")


def test_bearer_metadata_and_loopback_peers() -> None:
    assert bearer(call_metadata("sk-stl-x")) == "sk-stl-x"
    assert bearer([("Authorization", b"bearer sk-stl-y")]) == "sk-stl-y"
    assert bearer([("authorization", "Basic abc")]) is None
    assert bearer(None) is None
    assert is_loopback_peer("ipv4:127.0.0.1:5555")
    assert is_loopback_peer("ipv6:[::1]:5555")
    assert is_loopback_peer("unix:/tmp/s")
    assert not is_loopback_peer("ipv4:10.0.0.7:5555")
    assert not is_loopback_peer("ipv6:[2001:db8::1]:5555")


async def test_in_memory_key_log_reaches_every_registry() -> None:
    first, second = KeyRegistry(Clock()), KeyRegistry(Clock())
    log = InMemoryKeyLog(first, second)
    new = issue("acme", GRANT, actor="ops", now=NOW)
    await log.publish(new.event)
    assert second.authenticate(new.secret).key_id == new.key_id
    await log.publish(revoke(new.key_id, actor="ops", now=NOW))
    for registry in (first, second):
        with pytest.raises(UnauthenticatedError):
            registry.authenticate(new.secret)
    assert [type(e.change).__name__ for e in log.events] == ["KeyIssued", "KeyRevoked"]


def test_the_loopback_development_key_may_act_for_any_tenant_it_names() -> None:
    dev = issue(
        "demo", Grant(frozenset({Scope.ADMIN})), actor="bootstrap", now=NOW, loopback_only=True
    )
    principal = KeyRegistry(Clock(), [dev.event]).authenticate(dev.secret)
    assert principal.tenant_for("") == "demo"
    assert principal.tenant_for("acme") == "acme"
    assert principal.may_see("acme")
    ordinary = KeyRegistry(Clock(), [issue("demo", GRANT, actor="o", now=NOW).event])
    assert not ordinary.all_keys()[0].principal().may_see("acme")


def test_the_development_key_is_refused_from_another_host() -> None:
    dev = issue(
        "demo", Grant(frozenset({Scope.ADMIN})), actor="bootstrap", now=NOW, loopback_only=True
    )
    principal = KeyRegistry(Clock(), [dev.event]).authenticate(dev.secret)
    assert require_origin(principal, loopback=is_loopback_host("127.0.0.1")) is principal
    assert is_loopback_host("::1")
    for remote in ("10.1.2.3", "example.org", None):
        with pytest.raises(UnauthenticatedError):
            require_origin(principal, loopback=is_loopback_host(remote))
