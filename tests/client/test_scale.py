"""`stepline up --scale`: instance ids, derived ports and client ids, refusals (issue 15)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stepline_billing.spec import SPEC as BILLING
from stepline_client.cli import main
from stepline_client.supervisor import (
    PORT_STRIDE,
    SERVICES,
    Instance,
    ScaleError,
    Supervisor,
    instance_env,
    instance_of_client,
    parse_scale,
)
from stepline_router.spec import SPEC as ROUTER
from stepline_runtime.service import ServiceSpec


def test_the_scale_names_services_and_counts() -> None:
    assert parse_scale("planner=2, model-router=2,tool-executor=3,billing=2") == {
        "planner": 2,
        "model-router": 2,
        "tool-executor": 3,
        "billing": 2,
    }
    assert parse_scale("") == {}
    with pytest.raises(ScaleError, match="no service 'plnner'"):
        parse_scale("plnner=2")
    with pytest.raises(ScaleError, match="SERVICE=COUNT"):
        parse_scale("planner")
    with pytest.raises(ScaleError, match="at least 1"):
        parse_scale("planner=0")


def test_further_instances_get_their_own_ports_and_client_ids() -> None:
    first, third = Instance(ROUTER, 1), Instance(ROUTER, 3)
    assert (first.id, third.id) == ("model-router", "model-router-3")
    # The first instance runs exactly as an unscaled service does.
    assert instance_env(first, {}) == {}
    shift = 2 * PORT_STRIDE
    assert instance_env(third, {}) == {
        "STEPLINE_METRICS_PORT": str(ROUTER.metrics_port + shift),  # type: ignore[operator]
        "STEPLINE_GRPC_PORT": str(ROUTER.ports["grpc"] + shift),
        "STEPLINE_HTTP_PORT": str(ROUTER.ports["http"] + shift),
        "STEPLINE_KAFKA_CLIENT_ID_PREFIX": "stepline-3",
    }
    # Ports set in the environment move the same way; an address keeps its host; 0 stays 0.
    env = {"STEPLINE_BILLING_GRPC_ADDRESS": "0.0.0.0:7000", "STEPLINE_METRICS_PORT": "0"}
    derived = instance_env(Instance(BILLING, 2), env)
    assert derived["STEPLINE_BILLING_GRPC_ADDRESS"] == f"0.0.0.0:{7000 + PORT_STRIDE}"
    assert derived["STEPLINE_METRICS_PORT"] == "0"


def test_group_members_are_told_apart_by_client_id() -> None:
    assert instance_of_client("stepline-billing", {}) == 1
    assert instance_of_client("stepline-t1a2.planner-consumer", {}) == 1
    assert instance_of_client("stepline-3-billing", {}) == 3
    assert instance_of_client("someone-else", {}) is None
    assert instance_of_client("acme-2-billing", {"STEPLINE_KAFKA_CLIENT_ID_PREFIX": "acme"}) == 2


def test_every_port_of_every_service_can_move(tmp_path: Path) -> None:
    # Each spec names the setting behind each port, and that setting exists.
    for spec in SERVICES:
        fields = spec.load_settings().model_fields
        assert set(spec.port_settings) == set(spec.ports), spec.name
        assert set(spec.port_settings.values()) <= set(fields), spec.name
        assert set(spec.scale_needs) <= set(fields), spec.name
    # …so three instances of everything find no port taken twice.
    Supervisor(tmp_path, SERVICES, {s.name: 3 for s in SERVICES}).instances()


def test_billing_instances_need_a_shared_ledger(tmp_path: Path) -> None:
    with pytest.raises(ScaleError, match="STEPLINE_BILLING_DSN"):
        Supervisor(tmp_path, (BILLING,), {"billing": 2}).up({})
    assert not (tmp_path / "run" / "billing.pid").exists()


def test_colliding_ports_are_refused(tmp_path: Path) -> None:
    near = ServiceSpec("near", "near", build="near.app:build", metrics_port=9104 + PORT_STRIDE)
    with pytest.raises(ScaleError, match="port 9204"):
        Supervisor(tmp_path, (BILLING, near), {"billing": 2}).up({"STEPLINE_BILLING_DSN": "x"})


def test_the_cli_says_what_to_do_without_a_dsn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPLINE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STEPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # refused before any broker
    monkeypatch.delenv("STEPLINE_BILLING_DSN", raising=False)
    assert main(["up", "--scale", "billing=2"]) == 2
    error = capsys.readouterr().err
    assert "billing=2 needs STEPLINE_BILLING_DSN" in error
    assert main(["up", "--scale", "biling=2"]) == 2
    assert "no service 'biling'" in capsys.readouterr().err


SLEEPER = ServiceSpec("sleeper", "tests.client.sleeper", build="tests.client.sleeper:build")


def test_scaling_up_down_and_status_follow_the_instances(tmp_path: Path) -> None:
    env = dict(os.environ)
    try:
        up = Supervisor(tmp_path, (SLEEPER,), {"sleeper": 3}).up(env, ready_timeout_s=0)
        assert [(s.instance, s.running) for s in up] == [
            ("sleeper", True),
            ("sleeper-2", True),
            ("sleeper-3", True),
        ]
        assert (tmp_path / "logs" / "sleeper-3.log").exists()
        # Without a scale, what runs is reported and left alone.
        plain = Supervisor(tmp_path, (SLEEPER,))
        assert [s.instance for s in plain.status() if s.running] == [s.instance for s in up]
        plain.up(env, ready_timeout_s=0)
        assert [s.pid for s in plain.status()] == [s.pid for s in up]
        # An explicit smaller scale stops the instances beyond it.
        down = Supervisor(tmp_path, (SLEEPER,), {"sleeper": 1}).up(env, ready_timeout_s=0)
        assert [(s.instance, s.pid) for s in down] == [("sleeper", up[0].pid)]
        assert not (tmp_path / "run" / "sleeper-2.pid").exists()
    finally:
        stopped = Supervisor(tmp_path, (SLEEPER,)).down(grace_s=5)
    assert stopped == ["sleeper"]
