"""Records per second and CPU per record of the billing consumer on the shared broker.

Pre-produces `--records` UsageRecorded events over `--tenants` keys (and `--runs` run ids) into
a fresh namespace (or, with `--rate`, produces them at that pace once billing has joined:
batches as small as a live stack's), starts `python -m stepline_billing` as a subprocess and
times the committed offsets of its group from 10% to 100% (so start-up and the first rebalance
are left out); the process's user+system CPU over the same span, read from /proc, divided by
the records committed in it is the CPU per record; the records written to the rollups and
budgets topics per usage record are counted too. `--compare DIR` alternates this checkout with
another source tree (its `libs/*/src` and `services/*/src` put first on PYTHONPATH), `--repeat`
times each, and prints the medians: a before/after figure on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stepline_billing.spec import SPEC as BILLING
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.billing.factories import model_usage

__all__ = ["main"]

BILLING_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "config" / "billing.toml"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pythonpath(tree: Path) -> str:
    """The source folders of every package of the checkout at `tree`."""
    return os.pathsep.join(str(p) for p in sorted(tree.glob("*/*/src")) if p.is_dir())


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(max(m.offset, 0) for m in offsets.values())


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "stepline_billing"], env=env, stdout=sink, stderr=sink
        )


async def _written(kafka: KafkaSettings, namespace: str) -> int:
    """Records billing wrote to the rollups and budgets topics of `namespace`."""
    reader = AIOKafkaConsumer(**kafka.client_kwargs("bench-billing-offsets"))
    await reader.start()
    try:
        names = (Topics.USAGE_ROLLUPS, Topics.BUDGETS)
        parts = [TopicPartition(namespaced(n, namespace), p) for n in names for p in range(3)]
        return sum((await reader.end_offsets(parts)).values())
    finally:
        await reader.stop()


async def _stable(admin: AIOKafkaAdminClient, group: str, timeout_s: float = 120) -> None:
    """Wait until `group` has joined and been assigned its partitions."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [response] = await admin.describe_consumer_groups([group])
        if any(g[2] == "Stable" and g[5] for g in response.groups):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"group {group} did not become stable in {timeout_s:.0f} s")


async def _produce(
    producer: AIOKafkaProducer, topic: str, records: int, tenants: int, runs: int, rate: float
) -> None:
    """`records` usage events over `tenants` keys and `runs` runs; paced at `rate`/s if set."""
    now = datetime.now(UTC)
    started = time.monotonic()
    for i in range(records):
        tenant = f"tenant-{i % tenants}"
        message = model_usage(
            f"u{i}", tenant=tenant, run=f"run-{i % runs}", cost=Decimal("0.001"), at=now
        )
        record = encode(topic, tenant, message, event_id=message.usage_id, source="bench")
        await producer.send(topic, record.value, key=record.key, headers=list(record.headers))
        if rate and (ahead := started + (i + 1) / rate - time.monotonic()) > 0:
            await asyncio.sleep(ahead)
    await producer.flush()


async def run(
    records: int, tenants: int, runs: int = 50, tree: Path | None = None, rate: float = 0
) -> tuple[float, float, float]:
    """Records/s, CPU ms per record and output records per record of one billing process.

    Without `rate` the records are produced before billing starts (a backlog: large batches);
    with it billing starts first and they arrive at `rate` per second (batches as small as a
    live stack's). `tree` is another checkout whose packages the billing process runs.
    """
    kafka = KafkaSettings()
    namespace = f"b{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("bench-billing-admin"))
    await admin.start()
    producer = AIOKafkaProducer(**kafka.client_kwargs("bench-billing"), linger_ms=5)
    await producer.start()
    data = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    producing: asyncio.Task[None] | None = None
    try:
        wanted = (Topics.USAGE, Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ)
        await ensure_topics(admin, [t for t in CATALOG if t.name in wanted], 3, 1, namespace)
        topic = namespaced(Topics.USAGE, namespace)
        if not rate:
            await _produce(producer, topic, records, tenants, runs, rate)
        env = {
            **os.environ,
            "STEPLINE_TOPIC_NAMESPACE": namespace,
            "STEPLINE_PARTITIONS": "3",
            "STEPLINE_BILLING_DATA_DIR": str(data),
            "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
            "STEPLINE_METRICS_PORT": "0",
            "STEPLINE_LOG_LEVEL": "WARNING",
            # Found relative to the package otherwise, which another source tree may lack.
            "STEPLINE_BILLING_CONFIG": str(BILLING_CONFIG),
        }
        if tree is not None:
            env["PYTHONPATH"] = _pythonpath(tree)
        process = _spawn(env, data / "billing.log")
        group = namespaced(BILLING.name, namespace)
        started = finished = 0.0
        try:
            if rate:
                await _stable(admin, group)
                producing = asyncio.create_task(
                    _produce(producer, topic, records, tenants, runs, rate)
                )
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and process.poll() is None:
                done = await _committed(admin, group)
                if not started and done >= records // 10:
                    started, first, cpu_first = time.monotonic(), done, _cpu_s(process.pid)
                if done >= records:
                    finished, cpu_last = time.monotonic(), _cpu_s(process.pid)
                    break
                await asyncio.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
        if not finished:
            raise SystemExit(f"billing did not finish; see {data / 'billing.log'}")
        shutil.rmtree(data)  # its ledger and log; kept only when billing did not finish
        outputs = await _written(kafka, namespace)
        counted = records - first
        return (
            counted / (finished - started),
            (cpu_last - cpu_first) * 1000 / counted,
            outputs / records,
        )
    finally:
        if producing is not None:
            producing.cancel()
        await producer.stop()
        await admin.close()


def main() -> None:
    """Print the billing consumer's records/s and CPU per record (before/after with --compare)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=3_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=0, help="records/s while billing runs")
    parser.add_argument("--compare", type=Path, help="another checkout, run alternately first")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare is not None:
        trees.insert(0, (str(args.compare), args.compare.resolve()))
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in trees}
    for _ in range(args.repeat):
        for name, tree in trees:
            figure = asyncio.run(run(args.records, args.tenants, args.runs, tree, args.rate))
            figures[name].append(figure)
            print(
                f"  {name}: {figure[0]:.0f} records/s, {figure[1]:.3f} ms CPU/record, "
                f"{figure[2]:.2f} outputs/record",
                flush=True,
            )
    load = os.getloadavg()
    mode = f"paced at {args.rate:.0f}/s" if args.rate else "backlog"
    for name, values in figures.items():
        rate, cpu, outputs = (statistics.median(v[i] for v in values) for i in range(3))
        print(
            f"billing consumer [{name}]: {rate:.0f} records/s, {cpu:.3f} ms CPU per record, "
            f"{outputs:.2f} outputs per record (median of {len(values)}; {args.records} records "
            f"{mode}, {args.tenants} tenants, {args.runs} runs; load average {load[0]:.1f})"
        )


if __name__ == "__main__":
    main()
