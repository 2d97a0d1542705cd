"""Measure the batch replay on N support runs of a fresh offline stack (the README's figure).

    STEPLINE_KAFKA_BOOTSTRAP=127.0.0.1:9092 PYTHONPATH=. .local/tools/bin/uv run --frozen \
        python scripts/replay_batch.py 30 /tmp/replay-batch

Starts `stepline up` in its own namespace and state dir (offline `local` model, a webhook
receiver behind `send_reply`), submits N support goals and approves their replies, then runs
`stepline replay --route fast` over them and prints its table, the wall-clock time and how many
replies the webhook received before and after (a replay must send none).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tomllib
from pathlib import Path

from stepline_client.client import Goal, Stepline
from stepline_client.demo import GOAL, ReplyReceiver, demo_prices, demo_tools, render_toml
from stepline_client.offline import ROUTES_FILE, offline_routes
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from tests.cli.stack import (
    ROOT,
    Stack,
    free_port,
    stack_env,
    tools_registered,
    topics_created,
    wait_until,
)

TENANT = "acme"
TERMINAL = ("completed", "failed", "cancelled")


async def originals(settings: ServiceSettings, n: int, timeout_s: float = 900) -> float:
    """Submit `n` support goals, approve each reply as written, wait until all ended."""
    started = time.monotonic()
    async with Stepline(settings) as client:
        ids = {await client.submit(Goal(GOAL, tenant_id=TENANT, agent="support")) for _ in range(n)}
        approved: set[str] = set()
        ended: set[str] = set()
        while len(ended) < n:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{len(ended)} of {n} runs ended in {timeout_s:g}s")
            async for event in client.all_events():
                if event.run_id not in ids:
                    continue
                kind = event.WhichOneof("event")
                asked = event.approval_requested.approval_id
                if kind == "approval_requested" and asked not in approved:
                    approved.add(asked)
                    await client.decide(event.run_id, TENANT, asked, approve=True)
                elif kind in TERMINAL:
                    ended.add(event.run_id)
            await asyncio.sleep(1)
    return time.monotonic() - started


def main(n: int, state: Path) -> int:
    """Run the measurement; the batch command's exit code."""
    state.mkdir(parents=True, exist_ok=True)
    with ReplyReceiver() as receiver:
        tools = state / "tools.toml"
        tools.write_text(render_toml(demo_tools(ROOT / "deploy/config/tools.toml", receiver.port)))
        routes = offline_routes(tomllib.loads((ROOT / ROUTES_FILE).read_text()))
        (state / "routes.toml").write_text(render_toml(routes))
        prices = demo_prices(ROOT / "deploy/config/pricebook.toml", routes)
        (state / "pricebook.toml").write_text(render_toml(prices))
        kafka = KafkaSettings()
        billing = f"127.0.0.1:{free_port()}"
        env = stack_env(
            kafka,
            state,
            tools,
            billing,
            os.environ,
            routes=state / "routes.toml",
            pricebook=state / "pricebook.toml",
        )
        env["STEPLINE_BOOTSTRAP_TENANT"] = TENANT
        env.pop("STEPLINE_API_KEY", None)
        cli = Stack(env, state, TENANT, billing, receiver)
        try:
            cli.ok("up", timeout_s=180)
            wait_until(lambda: topics_created(cli), 60, "the services' topics")
            wait_until(lambda: tools_registered(cli), 60, "the executor's tool registry")
            namespace = env["STEPLINE_TOPIC_NAMESPACE"]
            took = asyncio.run(
                originals(ServiceSettings(kafka=kafka, topic_namespace=namespace), n)
            )
            before = len(receiver.replies)
            print(f"{n} originals ended in {took:.1f}s; replies delivered: {before}")
            argv = ["replay", "--tenant", TENANT, "--agent", "support", "--since", "7d"]
            argv += ["--route", "fast", "--concurrency", "4", "--spend-limit", "0.05"]
            argv += ["--out", str(state / "replay-fast.json")]
            begun = time.monotonic()
            done = cli.run(*argv, timeout_s=900)
            print(f"$ stepline {' '.join(argv)}\n{done.stdout}{done.stderr}")
            print(f"wall-clock {time.monotonic() - begun:.1f}s (CLI start-up included)")
            print(f"replies delivered before the batch {before}, after {len(receiver.replies)}")
            return done.returncode
        finally:
            cli.run("down", timeout_s=60)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), Path(sys.argv[2])))
