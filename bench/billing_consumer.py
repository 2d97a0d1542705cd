"""Records per second and CPU per record of the billing consumer on the shared broker.

Pre-produces `--records` UsageRecorded events over `--tenants` keys (and `--runs` run ids) into
a fresh namespace, starts `python -m stepline_billing` as a subprocess and times the committed
offsets of its group from 10% to 100% (so start-up and the first rebalance are left out); the
process's user+system CPU over the same span, read from /proc, divided by the records committed
in it is the CPU per record. `--compare DIR` alternates this checkout with another source tree
(its `libs/*/src` and `services/*/src` put first on PYTHONPATH), `--repeat` times each, and
prints the medians: a before/after figure on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from aiokafka import AIOKafkaProducer
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


async def run(
    records: int, tenants: int, runs: int = 50, tree: Path | None = None
) -> tuple[float, float]:
    """Records/s and CPU ms per record of one billing process over `records` usage events.

    `tree` is another checkout whose packages the billing process runs instead of this one's.
    """
    kafka = KafkaSettings()
    namespace = f"b{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("bench-billing-admin"))
    await admin.start()
    producer = AIOKafkaProducer(**kafka.client_kwargs("bench-billing"), linger_ms=5)
    await producer.start()
    data = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    try:
        wanted = (Topics.USAGE, Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ)
        await ensure_topics(admin, [t for t in CATALOG if t.name in wanted], 3, 1, namespace)
        topic = namespaced(Topics.USAGE, namespace)
        now = datetime.now(UTC)
        for i in range(records):
            tenant = f"tenant-{i % tenants}"
            message = model_usage(
                f"u{i}", tenant=tenant, run=f"run-{i % runs}", cost=Decimal("0.001"), at=now
            )
            record = encode(topic, tenant, message, event_id=message.usage_id, source="bench")
            await producer.send(topic, record.value, key=record.key, headers=list(record.headers))
        await producer.flush()
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
        counted = records - first
        return counted / (finished - started), (cpu_last - cpu_first) * 1000 / counted
    finally:
        await producer.stop()
        await admin.close()


def main() -> None:
    """Print the billing consumer's records/s and CPU per record (before/after with --compare)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=3_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--compare", type=Path, help="another checkout, run alternately first")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare is not None:
        trees.insert(0, (str(args.compare), args.compare.resolve()))
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    for _ in range(args.repeat):
        for name, tree in trees:
            rate, cpu_ms = asyncio.run(run(args.records, args.tenants, args.runs, tree))
            figures[name].append((rate, cpu_ms))
            print(f"  {name}: {rate:.0f} records/s, {cpu_ms:.3f} ms CPU/record", flush=True)
    load = os.getloadavg()
    for name, values in figures.items():
        print(
            f"billing consumer [{name}]: {statistics.median(v[0] for v in values):.0f} records/s, "
            f"{statistics.median(v[1] for v in values):.3f} ms CPU per record (median of "
            f"{len(values)}; {args.records} records, {args.tenants} tenants, {args.runs} runs; "
            f"load average {load[0]:.1f})"
        )


if __name__ == "__main__":
    main()
