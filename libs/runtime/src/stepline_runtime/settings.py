"""Typed settings shared by every service: where Kafka is and how to reach it securely."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GROUP_METADATA_MAX_AGE_MS", "KafkaSettings", "ServiceSettings", "namespaced"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# How stale a group consumer's topic metadata may get. A group leader that assigned while a topic
# was missing from its metadata (partitions without a leader just after a broker restart)
# rebalances only when a refresh shows the topic: aiokafka's default, 5 minutes, left a whole
# group without partitions that long (RELIABILITY.md, "Scaled chaos", finding 8).
GROUP_METADATA_MAX_AGE_MS = 5_000


class KafkaSettings(BaseSettings):
    """Connection to the Kafka cluster; `STEPLINE_KAFKA_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="STEPLINE_KAFKA_", extra="ignore")

    bootstrap: str = Field(
        default="127.0.0.1:9092",
        description="Comma-separated host:port list of brokers: the local one or a cluster.",
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id_prefix: str = "stepline"
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = Field(
        default=500,
        ge=10,
        description=(
            "Pause before a client retries after an error, reconnects included: aiokafka's"
            " default (100 ms) makes each client of a service retry ~10 times a second while"
            " the broker is down."
        ),
    )

    session_timeout_ms: int = Field(
        default=10_000,
        ge=6_000,
        description=(
            "How long a consumer group waits for a silent member (a killed instance) before"
            " giving its partitions to the others: the bulk of the failover time. The broker's"
            " group.min.session.timeout.ms (6 s by default) is the floor."
        ),
    )
    group_instance_id: str | None = Field(
        default=None,
        description=(
            "Static group membership (KIP-345): a member that restarts with the same id within"
            " the session timeout gets its partitions back without a rebalance. Unique per"
            " instance of a service (e.g. the pod name of a StatefulSet)."
        ),
    )

    def client_kwargs(self, client_id: str) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": f"{self.client_id_prefix}-{client_id}",
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = self._ssl_context()
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError(
                    "STEPLINE_KAFKA_SECURITY_PROTOCOL is SASL_*: set STEPLINE_KAFKA_SASL_MECHANISM,"
                    " STEPLINE_KAFKA_SASL_USERNAME and STEPLINE_KAFKA_SASL_PASSWORD"
                )
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def faststream_security(self) -> BaseSecurity | None:
        """The same connection security expressed as a FastStream security object."""
        context = self._ssl_context() if self.security_protocol in ("SSL", "SASL_SSL") else None
        if not self.security_protocol.startswith("SASL"):
            return BaseSecurity(ssl_context=context) if context else None
        sasl = self.client_kwargs("security")
        kinds: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
            "PLAIN": SASLPlaintext,
            "SCRAM-SHA-256": SASLScram256,
            "SCRAM-SHA-512": SASLScram512,
        }
        return kinds[sasl["sasl_mechanism"]](
            sasl["sasl_plain_username"],
            sasl["sasl_plain_password"],
            ssl_context=context,
            use_ssl=context is not None,
        )

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


class ServiceSettings(BaseSettings):
    """Base for each service's one `Settings` class; `STEPLINE_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="STEPLINE_", env_nested_delimiter="__", extra="ignore"
    )

    service_name: str = "stepline"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    partitions: int = Field(
        default=6, ge=1, description="Partition count used when Stepline creates its topics."
    )
    replication_factor: int = Field(default=1, ge=1)
    topic_namespace: str = Field(
        default="",
        pattern=r"^[a-zA-Z0-9_\-]*$",
        description="Prefix for every topic and consumer group (e.g. `staging`); empty: none.",
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        description=(
            "Input records an at-least-once service (router, executor, billing) handles at once;"
            " records of one key still run one after another, in order."
        ),
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Prometheus `/metrics`; 0.0.0.0 lets others scrape. The port defaults to the service
    # spec's (`ServiceSpec.metrics_port`); STEPLINE_METRICS_PORT overrides it, 0 disables.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    ready_file: Path | None = Field(
        default=None,
        description=(
            "Written once every part of the service started, removed when it stops: what a"
            " supervisor waits for (`stepline up`)."
        ),
    )
    fault_kill_after_records: int = Field(
        default=0,
        ge=0,
        description=(
            "Tests only: SIGKILL the process after its N-th handled record, after the handler's"
            " side effects and before the record's outputs and offset commit (0: never)."
        ),
    )

    def topic(self, name: str) -> str:
        """The topic `name` (from `Topics`) inside this deployment's namespace."""
        return namespaced(name, self.topic_namespace)

    def group(self, name: str) -> str:
        """A consumer group id (or transactional id prefix) inside this namespace."""
        return namespaced(name, self.topic_namespace)


def namespaced(name: str, namespace: str) -> str:
    """`namespace.name`, or `name` when there is no namespace."""
    return f"{namespace}.{name}" if namespace else name
