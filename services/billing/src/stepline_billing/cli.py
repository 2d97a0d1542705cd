"""`python -m stepline_billing.cli`: usage and ledger tables, CSV export, reconciliation, tail.

    usage --tenant T [--run R] [--since ISO] [--until ISO] [--granularity hourly|daily]
                                    (production and evaluation spend: replays, forks apart)
    ledger --tenant T [--run R] [--since ISO] [--until ISO] [--limit N] [--csv out.csv]
    reconcile [--tenant T]          exit 1 when any drift is found
    tail TOPIC [--from-beginning] [--max N] [--idle-timeout S]
                                    one JSON object per record (decoded by its ce_type header)

The first three read the ledger store billing writes (SQLite by default, PostgreSQL when
STEPLINE_BILLING_DSN is set); `tail` reads Kafka (STEPLINE_KAFKA_*).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from stepline_billing.app import open_store
from stepline_billing.config import Settings
from stepline_billing.ledger import LedgerEntry
from stepline_billing.queries import all_entries, evaluation_split, reconcile, usage_summary
from stepline_billing.rollups import Granularity
from stepline_billing.store import LedgerQuery
from stepline_pricebook import PriceBook
from stepline_runtime.jsonlines import tail

__all__ = ["main"]

# Every generated module, so `tail` can decode any Stepline topic by its ce_type header.
_LEDGER_HEADER = (
    "occurred_at", "usage_id", "run_id", "kind", "provider", "model", "tool", "succeeded",
    "input_tokens", "output_tokens", "cached_input_tokens", "cost", "currency", "priced_by",
    "price_book_version",
)  # fmt: skip


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Print rows as an aligned plain-text table."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    line = "  ".join("{:<%d}" % w for w in widths)  # noqa: UP031 (a format template)
    print(line.format(*header).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(line.format(*row).rstrip(), file=out)


def _cost(entry_cost: object) -> str:
    return "UNPRICED" if entry_cost is None else str(entry_cost)


def _ledger_row(entry: LedgerEntry) -> list[str]:
    u = entry.usage
    return [
        u.occurred_at.isoformat(timespec="seconds"), u.usage_id, u.run_id, u.kind.value,
        u.provider, u.model, u.tool, "yes" if u.succeeded else "no", str(u.tokens.input),
        str(u.tokens.output), str(u.tokens.cached_input), _cost(entry.cost), entry.currency,
        entry.priced_by.value, entry.price_book_version,
    ]  # fmt: skip


def cmd_usage(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Print a tenant's rollups and totals."""
    store = open_store(settings)
    start = _time(args.since) if args.since else None
    end = _time(args.until) if args.until else None
    try:
        summary = usage_summary(
            store, args.tenant, Granularity(args.granularity), args.run or "", start, end
        )
        split = evaluation_split(store, args.tenant, args.run or "", start, end)
    finally:
        store.close()
    rows = [
        [
            r.key.window_start.isoformat(timespec="minutes"), r.key.kind.value, r.key.provider,
            r.key.model, r.key.tool, str(r.calls), str(r.failures), str(r.unpriced_calls),
            str(r.tokens.input), str(r.tokens.output), str(r.cost),
        ]
        for r in summary.rollups
    ]  # fmt: skip
    rows.append(
        [
            "TOTAL", "", "", "", "", str(summary.calls), str(summary.failures),
            str(summary.unpriced_calls), str(summary.tokens.input), str(summary.tokens.output),
            str(summary.cost),
        ]
    )  # fmt: skip
    header = ("window", "kind", "provider", "model", "tool", "calls", "failures", "unpriced",
              "input_tokens", "output_tokens", "cost")  # fmt: skip
    print(f"tenant {args.tenant}  ({args.granularity})", file=out)
    table(header, rows, out)
    print(
        f"production {split.production}, evaluation (replays and forks) {split.evaluation}"
        f" in {split.evaluation_runs} run(s), {split.evaluation_calls} call(s)",
        file=out,
    )
    if summary.unpriced_calls:
        print(
            f"note: {summary.unpriced_calls} call(s) had no price; their cost is unknown and not"
            " included in the cost column",
            file=out,
        )
    return 0


def cmd_ledger(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Print (or export as CSV) a tenant's ledger rows."""
    query = LedgerQuery(
        tenant_id=args.tenant,
        run_id=args.run or "",
        start=_time(args.since) if args.since else None,
        end=_time(args.until) if args.until else None,
    )
    store = open_store(settings)
    try:
        entries = list(all_entries(store, query))
    finally:
        store.close()
    rows = [_ledger_row(e) for e in entries]
    if args.csv:
        with Path(args.csv).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_LEDGER_HEADER)
            writer.writerows(rows)
        print(f"wrote {len(rows)} ledger rows to {args.csv}", file=out)
        return 0
    table(_LEDGER_HEADER, rows[: args.limit] if args.limit else rows, out)
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Recompute totals from the ledger, compare; exit 1 on drift."""
    store = open_store(settings)
    try:
        drifts = reconcile(store, PriceBook.load(), args.tenant or "")
        tenants = [args.tenant] if args.tenant else store.tenants()
    finally:
        store.close()
    if not drifts:
        print(f"reconciled {len(tenants)} tenant(s): no drift", file=out)
        return 0
    table(
        ("scope", "what", "expected (ledger)", "found"),
        [[d.scope, d.what, d.expected, d.found] for d in drifts],
        out,
    )
    print(f"drift: {len(drifts)} difference(s)", file=out)
    return 1


async def _tail(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    await tail(
        settings.kafka,
        settings.topic(args.topic),
        out,
        from_beginning=args.from_beginning,
        max_records=args.max,
        idle_timeout_s=args.idle_timeout or None,
        client_id="billing-tail",
    )
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Print records of a topic as JSON lines."""
    return asyncio.run(_tail(args, settings, out))


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    root = argparse.ArgumentParser(prog="python -m stepline_billing.cli", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    for name in ("usage", "ledger"):
        sub = commands.add_parser(name)
        sub.add_argument("--tenant", required=True)
        sub.add_argument("--run")
        sub.add_argument("--since", help="ISO time (UTC if no offset), inclusive")
        sub.add_argument("--until", help="ISO time (UTC if no offset), exclusive")
        if name == "usage":
            sub.add_argument(
                "--granularity", choices=[g.value for g in Granularity], default="daily"
            )
        else:
            sub.add_argument("--csv", help="write the rows to this CSV file instead")
            sub.add_argument("--limit", type=int, default=0, help="print at most N rows")
    reconcile_cmd = commands.add_parser("reconcile")
    reconcile_cmd.add_argument("--tenant")
    tail = commands.add_parser("tail")
    tail.add_argument(
        "topic", help="e.g. stepline.usage.v1 (namespaced by STEPLINE_TOPIC_NAMESPACE)"
    )
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, help="stop after N records")
    tail.add_argument(
        "--idle-timeout", type=float, default=0, help="stop after S seconds without records"
    )
    return root


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run one command; return its exit code."""
    args = parser().parse_args(argv)
    settings = Settings()
    commands = {
        "usage": cmd_usage,
        "ledger": cmd_ledger,
        "reconcile": cmd_reconcile,
        "tail": cmd_tail,
    }
    return commands[args.command](args, settings, out)


if __name__ == "__main__":
    sys.exit(main())
