"""Single-node KRaft Apache Kafka on loopback from Maven Central jars, for dev and tests."""

from __future__ import annotations

from .broker import BrokerStatus, LocalKafka, new_cluster_id
from .errors import KafkaNotReadyError, LocalKafkaError
from .paths import KafkaSettings, find_repo_root
from .readiness import is_ready, probe, wait_ready

__all__ = [
    "BrokerStatus",
    "KafkaNotReadyError",
    "KafkaSettings",
    "LocalKafka",
    "LocalKafkaError",
    "find_repo_root",
    "is_ready",
    "new_cluster_id",
    "probe",
    "wait_ready",
]
