"""The topic catalog is consistent with the contracts; settings build client options."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from pydantic import SecretStr

from stepline.v1 import (  # noqa: F401  (imported to register their message types)
    budgets_pb2,
    control_pb2,
    dead_letter_pb2,
    goals_pb2,
    model_pb2,
    planner_state_pb2,
    runs_pb2,
    tools_pb2,
    usage_pb2,
)
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from stepline_runtime.topics import CATALOG, Cleanup, Topics


def test_topic_names_are_unique_and_versioned() -> None:
    names = [t.name for t in CATALOG]
    assert len(names) == len(set(names))
    assert all(n.startswith("stepline.") and n.endswith(".v1") for n in names)
    assert {getattr(Topics, a) for a in dir(Topics) if a.isupper()} == set(names)


def test_every_payload_is_a_real_message_type() -> None:
    pool = descriptor_pool.Default()
    for topic in CATALOG:
        for payload in topic.payloads:
            assert pool.FindMessageTypeByName(payload), f"{topic.name}: {payload}"


def test_planner_inputs_and_changelog_are_one_copartitioned_group() -> None:
    group = {t.name for t in CATALOG if t.copartition_group == "planner-inputs"}
    assert group == {
        Topics.GOALS,
        Topics.CONTROL,
        Topics.MODEL_RESULTS,
        Topics.TOOL_RESULTS,
        Topics.PLANNER_STATE,
    }


def test_state_topics_are_compacted() -> None:
    compacted = {t.name for t in CATALOG if t.cleanup is Cleanup.COMPACT}
    assert compacted == {Topics.BUDGETS, Topics.PLANNER_STATE, Topics.TOOLS, Topics.KEYS}


def test_sasl_settings_require_credentials_and_keep_the_password_secret() -> None:
    with pytest.raises(ValueError, match="STEPLINE_KAFKA_SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT").client_kwargs("x")
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr("s3cret"),
    )
    kwargs = settings.client_kwargs("planner")
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["client_id"] == "stepline-planner"
    assert "s3cret" not in repr(settings)
    security = settings.faststream_security()
    assert type(security).__name__ == "SASLScram512"


def test_bootstrap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_KAFKA_BOOTSTRAP", "broker-1:9093,broker-2:9093")
    assert KafkaSettings().client_kwargs("x")["bootstrap_servers"] == "broker-1:9093,broker-2:9093"


def test_service_settings_read_kafka_settings_and_namespace_topics_and_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPLINE_KAFKA_BOOTSTRAP", "10.0.0.1:9092")
    monkeypatch.setenv("STEPLINE_TOPIC_NAMESPACE", "staging")
    settings = ServiceSettings()
    assert settings.kafka.bootstrap == "10.0.0.1:9092"
    assert settings.topic(Topics.GOALS) == "staging.stepline.goals.v1"
    assert settings.group("stepline-planner") == "staging.stepline-planner"
    assert ServiceSettings(topic_namespace="").topic(Topics.GOALS) == Topics.GOALS
