"""Which routes `stepline up` gives the router: offline on a keyless loopback dev box only."""

from __future__ import annotations

import tomllib
from pathlib import Path

from stepline_client.offline import choose_routes

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "config" / "routes.toml"
LOOPBACK = {"STEPLINE_KAFKA_BOOTSTRAP": "127.0.0.1:9092"}


def test_no_key_on_loopback_serves_every_shipped_route_from_the_local_stand_in(
    tmp_path: Path,
) -> None:
    choice = choose_routes(LOOPBACK, shipped=SHIPPED, state_dir=tmp_path)
    written = Path(choice.env["STEPLINE_ROUTES"])
    assert written.parent == tmp_path / "config"
    offline = tomllib.loads(written.read_text(encoding="utf-8"))
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    # Every route a profile may name still exists, each served by the local deployment only.
    assert set(offline["routes"]) == set(shipped["routes"])
    for route in offline["routes"].values():
        assert route["deployments"] == ["local"]
    assert offline["deployments"] == {"local": shipped["deployments"]["local"]}
    assert offline["defaults"] == shipped["defaults"]
    # The user is told, with the variables that would bring real models.
    assert "not an LLM" in choice.note
    assert "OPENAI_API_KEY" in choice.note
    assert "ANTHROPIC_API_KEY" in choice.note


def test_a_key_keeps_the_shipped_routes(tmp_path: Path) -> None:
    choice = choose_routes(
        {**LOOPBACK, "OPENAI_API_KEY": "sk-test-1"}, shipped=SHIPPED, state_dir=tmp_path
    )
    assert choice.env == {}
    assert str(SHIPPED) in choice.note
    assert "sk-test-1" not in choice.note
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ANTHROPIC_API_KEY").write_text("sk-ant-test\n")
    in_file = {**LOOPBACK, "STEPLINE_SECRETS_DIR": str(secrets)}
    assert choose_routes(in_file, shipped=SHIPPED, state_dir=tmp_path).env == {}


def test_routes_the_user_chose_are_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    choice = choose_routes(
        {**LOOPBACK, "STEPLINE_ROUTES": str(mine)}, shipped=SHIPPED, state_dir=tmp_path
    )
    assert choice.env == {}
    assert str(mine) in choice.note


def test_a_remote_cluster_without_keys_keeps_production_routes_and_warns(tmp_path: Path) -> None:
    remote = {"STEPLINE_KAFKA_BOOTSTRAP": "kafka-1.prod.example:9093,127.0.0.1:9092"}
    choice = choose_routes(remote, shipped=SHIPPED, state_dir=tmp_path)
    assert choice.env == {}
    assert "will fail" in choice.note
    assert "OPENAI_API_KEY" in choice.note
    assert not (tmp_path / "config").exists()
