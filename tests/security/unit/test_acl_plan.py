"""The ACL plan of scripts/kafka_acls.py and the SCRAM credentials of the local SASL broker."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from scripts.kafka_acls import ACCESS, Access, access, acl_command, bindings, main, render
from stepline_localkafka import KafkaSettings, LocalKafka, LocalKafkaError
from stepline_localkafka.security import MECHANISM, SERVICE_USERS, ScramCredentials
from stepline_planner.spec import SPEC as PLANNER
from stepline_runtime.service import ServiceSpec, discover
from stepline_runtime.settings import namespaced
from stepline_runtime.topics import CATALOG, Topics

ROOT = Path(__file__).resolve().parents[3]


def _by_type(
    namespace: str, service: str
) -> dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]]:
    found: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    for b in bindings([a for a in ACCESS if a.service == service], namespace):
        found.setdefault(b.resource_type, []).append((b.names, b.operations))
    return found


def test_every_catalog_topic_has_a_writer_and_every_principal_has_a_scram_user() -> None:
    written = set().union(*(a.writes for a in ACCESS))
    assert {t.name for t in CATALOG} - written == set()
    assert [a.service for a in ACCESS] == list(SERVICE_USERS)


def test_principals_come_from_the_service_specs_and_a_new_spec_gets_its_grants() -> None:
    names = [spec.name for spec in discover()]
    # Services from their specs, then the principals that are not services (the key admin).
    assert [a.service for a in ACCESS] == [*names, "key-admin"]
    summarizer = ServiceSpec(
        "summarizer",
        "stepline_summarizer",
        build="stepline_summarizer.app:build",
        consumes=(Topics.RUNS,),
        writes=(Topics.DLQ,),
    )
    grants = render(bindings(access([summarizer]), "ns"))
    assert "User:summarizer: Read/Describe/Create on topic ns.stepline.runs.v1" in grants
    assert "User:summarizer: Write/Describe/Create on topic ns.stepline.dlq.v1" in grants
    assert "User:summarizer: Read/Describe on group ns.summarizer" in grants
    assert "User:summarizer" not in render(bindings(ACCESS, "ns"))


def test_router_gets_exactly_its_topics_group_and_idempotence() -> None:
    ns = "prod"
    found = _by_type(ns, "model-router")
    assert sorted(found["topic"]) == [
        (
            (
                namespaced(Topics.DLQ, ns),
                namespaced(Topics.MODEL_RESULTS, ns),
                namespaced(Topics.USAGE, ns),
            ),
            ("Write", "Describe", "Create"),
        ),
        ((namespaced(Topics.KEY_SPEND, ns),), ("Read", "Write", "Describe", "Create")),
        (
            (namespaced(Topics.KEYS, ns), namespaced(Topics.MODEL_REQUESTS, ns)),
            ("Read", "Describe", "Create"),
        ),
    ]
    assert found["group"] == [(("prod.model-router",), ("Read", "Describe"))]
    assert found["cluster"] == [(("kafka-cluster",), ("IdempotentWrite",))]
    assert "transactional-id" not in found


def test_planner_transactional_ids_are_a_namespaced_prefix_of_the_processor_ids() -> None:
    planner = [b for b in bindings(ACCESS, "staging") if b.principal == "User:planner"]
    (txn,) = [b for b in planner if b.resource_type == "transactional-id"]
    assert txn.pattern == "prefixed"
    assert txn.operations == ("Write", "Describe")
    # TransactionalProcessor uses f"{app_id}-{partition}" with app_id = the namespaced group.
    assert f"{namespaced(PLANNER.name, 'staging')}-3".startswith(txn.names[0])
    assert txn.names == ("staging.planner-",)
    # Reads and writes its own changelog; the front door never touches it.
    state = namespaced(Topics.PLANNER_STATE, "staging")
    assert any(state in b.names and "Read" in b.operations for b in planner)
    frontdoor = [b for b in bindings(ACCESS, "staging") if b.principal == "User:frontdoor"]
    assert frontdoor
    assert all(state not in b.names for b in frontdoor)


def test_unknown_topic_is_rejected() -> None:
    with pytest.raises(ValueError, match="not in the catalog"):
        bindings([Access("x", reads=frozenset({"stepline.nope.v1"}), writes=frozenset())])


def test_acl_command_lines() -> None:
    router = bindings([a for a in ACCESS if a.service == "model-router"])
    cluster = acl_command(router[-1], "h:9", Path("admin.properties"), "cp")
    assert cluster[-4:] == ["IdempotentWrite", "--cluster", "--resource-pattern-type", "literal"]
    assert "--topic" not in cluster
    assert cluster[cluster.index("--command-config") + 1] == "admin.properties"
    topics = acl_command(router[0], "h:9", None, "cp")
    assert "--command-config" not in topics
    assert topics.count("--topic") == len(router[0].names)


def test_dry_run_prints_grants_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run", "--namespace", "ns1", "--service", "planner"]) == 0
    out = capsys.readouterr().out
    assert "User:planner: Write/Describe on transactional-id ns1.planner- (prefix)" in out
    assert "org.apache.kafka.tools.AclCommand" in out
    assert "--resource-pattern-type prefixed" in out
    assert "User:model-router" not in out


def test_scram_credentials_round_trip_private(tmp_path: Path) -> None:
    creds = ScramCredentials.generate()
    path = tmp_path / "sasl" / "credentials.json"
    creds.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = ScramCredentials.load(path)
    assert loaded == creds
    assert list(creds.passwords) == ["admin", *SERVICE_USERS]
    assert json.loads(path.read_text())["mechanism"] == MECHANISM
    args = creds.format_args()
    assert args[0] == "--add-scram"
    assert args[1] == f"SCRAM-SHA-512=[name=admin,password={creds.password('admin')}]"
    env = creds.env("billing")
    assert env["STEPLINE_KAFKA_SASL_USERNAME"] == "billing"
    assert env["STEPLINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    with pytest.raises(LocalKafkaError, match="no SCRAM user 'nobody'"):
        creds.password("nobody")
    assert ScramCredentials.load(tmp_path / "absent.json") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sasl_on_a_plain_formatted_state_dir_is_refused(tmp_path: Path) -> None:
    settings = KafkaSettings.resolve(
        state_dir=tmp_path,
        port=_free_port(),
        controller_port=_free_port(),
        deploy_dir=ROOT / "deploy" / "kafka",
        lib_dir=tmp_path / "lib",
        sasl=True,
        env={},
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("version=1\n")
    with pytest.raises(LocalKafkaError, match="formatted without SASL users"):
        LocalKafka(settings, echo=lambda _: None).up(timeout=5)
    assert not settings.credentials_file.exists()
