"""Records per second of the billing consumer (an at-least-once service) on the shared broker.

Pre-produces `--records` UsageRecorded events over `--tenants` keys into a fresh namespace,
starts `python -m stepline_billing` as a subprocess and times the committed offsets of its
group from 10% to 100% (so start-up and the first rebalance are left out). Run it against two
source trees (e.g. PYTHONPATH pointing at another checkout's packages) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
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


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(max(m.offset, 0) for m in offsets.values())


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "stepline_billing"], env=env, stdout=sink, stderr=sink
        )


async def run(records: int, tenants: int) -> float:
    """Records/s of one billing process over `records` pre-produced usage events."""
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
                f"u{i}", tenant=tenant, run=f"run-{i % 50}", cost=Decimal("0.001"), at=now
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
        process = _spawn(env, data / "billing.log")
        group = namespaced(BILLING.name, namespace)
        started = finished = 0.0
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and process.poll() is None:
                done = await _committed(admin, group)
                if not started and done >= records // 10:
                    started, first = time.monotonic(), done
                if done >= records:
                    finished = time.monotonic()
                    break
                await asyncio.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
        if not finished:
            raise SystemExit(f"billing did not finish; see {data / 'billing.log'}")
        return (records - first) / (finished - started)
    finally:
        await producer.stop()
        await admin.close()


def main() -> None:
    """Print the billing consumer's records/s."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=3_000)
    parser.add_argument("--tenants", type=int, default=20)
    args = parser.parse_args()
    rate = asyncio.run(run(args.records, args.tenants))
    print(f"billing consumer: {rate:.0f} records/s ({args.records} records, {args.tenants} keys)")


if __name__ == "__main__":
    main()
