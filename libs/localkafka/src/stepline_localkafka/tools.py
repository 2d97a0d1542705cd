"""Kafka's own command line tools (kafka-topics, kafka-consumer-groups, …) on the local jars."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from .broker import java_executable
from .jars import ensure_jars
from .paths import KafkaSettings
from .security import ScramCredentials

__all__ = ["TOOLS", "TOOL_JVM_OPTS", "KafkaTool", "classpath", "describe_tools", "tool_command"]

# Tools are short-lived clients: C1 JIT and the serial GC start them about twice as fast.
TOOL_JVM_OPTS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


@dataclass(frozen=True, slots=True)
class KafkaTool:
    """One tool of Kafka's `bin/` directory: its main class and how it is pointed at a broker."""

    main_class: str
    # Takes --bootstrap-server (filled in with the configured broker when not given).
    bootstrap: bool = True
    # The option that names a client config file (the admin login of a SASL broker), if any.
    config_option: str | None = "--command-config"


# The names and classes of Kafka 4.1's bin/*.sh scripts.
TOOLS: dict[str, KafkaTool] = {
    "kafka-acls": KafkaTool("org.apache.kafka.tools.AclCommand"),
    "kafka-broker-api-versions": KafkaTool("org.apache.kafka.tools.BrokerApiVersionsCommand"),
    "kafka-cluster": KafkaTool("org.apache.kafka.tools.ClusterTool", config_option="--config"),
    "kafka-configs": KafkaTool("kafka.admin.ConfigCommand"),
    "kafka-console-consumer": KafkaTool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer", config_option="--consumer.config"
    ),
    "kafka-console-producer": KafkaTool(
        "org.apache.kafka.tools.ConsoleProducer", config_option="--producer.config"
    ),
    "kafka-consumer-groups": KafkaTool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
    ),
    "kafka-delete-records": KafkaTool("org.apache.kafka.tools.DeleteRecordsCommand"),
    "kafka-dump-log": KafkaTool("kafka.tools.DumpLogSegments", bootstrap=False, config_option=None),
    "kafka-features": KafkaTool("org.apache.kafka.tools.FeatureCommand"),
    "kafka-get-offsets": KafkaTool("org.apache.kafka.tools.GetOffsetShell"),
    "kafka-leader-election": KafkaTool(
        "org.apache.kafka.tools.LeaderElectionCommand", config_option="--admin.config"
    ),
    "kafka-log-dirs": KafkaTool("org.apache.kafka.tools.LogDirsCommand"),
    "kafka-metadata-quorum": KafkaTool("org.apache.kafka.tools.MetadataQuorumCommand"),
    "kafka-reassign-partitions": KafkaTool(
        "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"
    ),
    "kafka-topics": KafkaTool("org.apache.kafka.tools.TopicCommand"),
    "kafka-transactions": KafkaTool("org.apache.kafka.tools.TransactionsCommand"),
}


def classpath(settings: KafkaSettings) -> str:
    """The broker jars plus the kafka-tools jar, resolving either with Maven if missing."""
    ensure_jars(settings.pom_file, settings.lib_dir)
    ensure_jars(settings.tools_pom_file, settings.tools_lib_dir)
    return settings.tools_classpath


def tool_command(settings: KafkaSettings, name: str, args: Sequence[str]) -> list[str]:
    """The java command line running tool `name` with `args` against the configured broker.

    `--bootstrap-server` defaults to STEPLINE_KAFKA_BOOTSTRAP or the local broker; on a SASL
    broker of this state dir the admin's client config is passed unless the caller gave one.
    """
    tool = TOOLS[name]
    given = set(args)
    extra: list[str] = []
    if tool.bootstrap and not given & {"--bootstrap-server", "--bootstrap-controller"}:
        extra += ["--bootstrap-server", settings.bootstrap]
    credentials = ScramCredentials.load(settings.credentials_file)
    if (
        tool.config_option is not None
        and tool.config_option not in given
        and credentials is not None
        and settings.external_bootstrap is None
        and settings.admin_client_config.is_file()
    ):
        extra += [tool.config_option, str(settings.admin_client_config)]
    return [
        java_executable(),
        *TOOL_JVM_OPTS,
        f"-Dlog4j2.configurationFile={settings.tools_log4j_file}",
        "-cp",
        classpath(settings),
        tool.main_class,
        *args,
        *extra,
    ]


def describe_tools(settings: KafkaSettings) -> str:
    """The tool names and the plain java line behind them, for `tool --list`."""
    cp = settings.tools_classpath
    lines = [f"  {name:<28} {tool.main_class}" for name, tool in sorted(TOOLS.items())]
    example = shlex.join(["java", "-cp", cp, TOOLS["kafka-topics"].main_class])
    return "\n".join(
        [
            "Kafka's tools, run as `python -m stepline_localkafka tool NAME ARGS…`:",
            *lines,
            f"The same by hand (after one `tool` run resolved the jars): {example} "
            f"--bootstrap-server {settings.bootstrap} --list",
        ]
    )
