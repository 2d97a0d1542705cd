"""`stepline models`: the priced models of the price book, and what a route can reach.

Prices are per one million tokens, from the price book (the maintained catalog under the local
override layer, see `stepline_pricebook`). A model the book does not price is shown *unpriced*.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from stepline_pricebook import ModelEntry, ModelPrice, PriceBook, PriceBookError, default_path
from stepline_routes import PRESETS, RoutesError, ToolMode, load_routes
from stepline_routes import default_path as default_routes_path

__all__ = ["ModelsError", "RouteTarget", "add_parser", "read_route", "run"]

_EXIT_USAGE = 2
_UNPRICED = "unpriced"


class ModelsError(Exception):
    """A problem the user can fix (a missing file, an unknown route); the message says how."""


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One deployment of a route as the routes file declares it."""

    deployment: str
    provider: str
    model: str
    # The deployment's declared capabilities (tools, streaming, context_window, …).
    capabilities: dict[str, Any]


def add_parser(sub: Any) -> None:
    """Register `models` on the `stepline` subcommand parsers."""
    models = sub.add_parser("models", help="priced models, or what a route can reach")
    models.add_argument("--route", help="only the deployments of this route, priced or not")
    models.add_argument("--provider", help="only this provider (e.g. openai, anthropic, google)")
    models.add_argument("--json", action="store_true", help="one JSON document for machines")
    models.add_argument("--pricebook", type=Path, help="default: STEPLINE_PRICEBOOK or the repo's")
    models.add_argument("--routes", type=Path, help="default: STEPLINE_ROUTES or the repo's")
    models.add_argument(
        "--presets",
        action="store_true",
        help="the OpenAI-compatible services a deployment can name as its provider",
    )


def run(args: argparse.Namespace, _settings: object, out: TextIO) -> int:
    """Print the catalog listing or a route's reach; 2 with a message on a usage error."""
    if args.presets:
        _print_presets(out, as_json=args.json)
        return 0
    try:
        book = PriceBook.load(args.pricebook or default_path())
        if args.route:
            targets = read_route(args.routes or default_routes_path(), args.route)
            rows = [_target_row(book, t) for t in targets]
        else:
            rows = [_entry_row(e) for e in _sorted(book.model_entries())]
    except (ModelsError, PriceBookError) as error:
        print(f"stepline: {error}", file=sys.stderr)
        return _EXIT_USAGE
    if args.provider:
        rows = [r for r in rows if args.provider in (r["provider"], r.get("catalog_provider"))]
    try:
        if args.json:
            document = {
                "price_book_version": book.version,
                "route": args.route,
                "priced": sum(1 for r in rows if r["priced"]),
                "models": rows,
            }
            json.dump(document, out, indent=1)
            out.write("\n")
        else:
            _print_table(book, rows, args.route, out)
        out.flush()
    except BrokenPipeError:
        # `stepline models | head`: the reader has what it wanted. Python's own recipe: point
        # stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def read_route(path: Path, route: str) -> list[RouteTarget]:
    """The deployments of `route` in a routes file, in the route's order."""
    try:
        config = load_routes(path)
    except RoutesError as error:
        raise ModelsError(str(error)) from error
    found = config.routes.get(route)
    if found is None:
        known = ", ".join(sorted(config.routes))
        raise ModelsError(f"no route {route!r} in {path}; routes: {known or 'none'}")
    return [
        RouteTarget(
            deployment=d.name,
            provider=d.provider,
            model=d.model,
            capabilities={
                # What the router filters by: tools natively or through JSON output.
                "tools": d.serves_tools(),
                "tools-via-json": d.tool_mode is ToolMode.JSON,
                "streaming": d.capabilities.streaming,
                "vision": d.capabilities.vision,
                "json-schema": d.capabilities.json_schema,
                # A window the file leaves unsaid is the catalog's, as for the router.
                **(
                    {"context_window": d.capabilities.context_window}
                    if "context_window" in d.capabilities.stated
                    else {}
                ),
            },
        )
        for d in found.deployments
    ]


def _sorted(entries: Iterable[ModelEntry]) -> list[ModelEntry]:
    return sorted(entries, key=lambda e: (e.provider, e.model))


def _money(value: Decimal | None) -> str | None:
    if value is None:
        return None
    exact = value.normalize()
    exponent = exact.as_tuple().exponent
    # At least cents, as prices are quoted; more digits only when the price has them.
    cents = (
        exact.quantize(Decimal("0.01")) if isinstance(exponent, int) and exponent > -2 else exact
    )
    return format(cents, "f")


def _price_fields(price: ModelPrice) -> dict[str, Any]:
    return {
        "input_per_mtok": _money(price.input_per_mtok),
        "output_per_mtok": _money(price.output_per_mtok),
        "cached_input_per_mtok": _money(price.cached_input_per_mtok),
        "cache_write_per_mtok": _money(price.cache_write_per_mtok),
        "reasoning_per_mtok": _money(price.reasoning_per_mtok),
        "tiers": [
            {
                "above_input_tokens": tier.above_input_tokens,
                "input_per_mtok": _money(tier.price.input_per_mtok),
                "output_per_mtok": _money(tier.price.output_per_mtok),
                "cached_input_per_mtok": _money(tier.price.cached_input_per_mtok),
            }
            for tier in price.tiers
        ],
    }


def _entry_row(entry: ModelEntry) -> dict[str, Any]:
    return {
        "provider": entry.provider,
        "model": entry.model,
        "name": entry.name,
        "priced": True,
        "source": entry.source.value,
        **_price_fields(entry.price),
        "context_window": entry.context_window,
        "capabilities": sorted(entry.capabilities),
        "deprecated": entry.deprecated,
        "notes": list(entry.notes),
    }


def _target_row(book: PriceBook, target: RouteTarget) -> dict[str, Any]:
    entry = book.model_entry(target.provider, target.model)
    declared = {k for k, v in target.capabilities.items() if v is True}
    window = target.capabilities.get("context_window")
    row: dict[str, Any] = {
        "deployment": target.deployment,
        "provider": target.provider,
        "catalog_provider": book.catalog_provider_id(target.provider),
        "model": target.model,
        "priced": entry is not None,
    }
    if entry is None:
        return {
            **row,
            "source": _UNPRICED,
            "context_window": window if isinstance(window, int) else None,
            "capabilities": sorted(declared),
            "notes": [
                "not in the catalog nor in pricebook.toml: its calls are recorded unpriced, and "
                "the router skips it under a cost cap; price it in pricebook.toml"
            ],
        }
    return {
        **row,
        "source": entry.source.value,
        "priced_as": f"{entry.provider}/{entry.model}",
        **_price_fields(entry.price),
        # The deployment's own window wins: it is what the route was configured to send.
        "context_window": window if isinstance(window, int) else entry.context_window,
        "capabilities": sorted(declared | entry.capabilities),
        "declared_capabilities": sorted(declared),
        "deprecated": entry.deprecated,
        "notes": list(entry.notes),
    }


def _print_table(
    book: PriceBook, rows: Sequence[dict[str, Any]], route: str | None, out: TextIO
) -> None:
    priced = sum(1 for r in rows if r["priced"])
    what = f"route {route!r}: {len(rows)} deployments" if route else f"{len(rows)} models"
    print(f"price book {book.version} — {what}, {priced} priced ($ per 1M tokens)", file=out)
    header = ["PROVIDER", "MODEL", "INPUT", "OUTPUT", "CACHED", "CONTEXT", "CAPABILITIES", "SOURCE"]
    if route:
        header.insert(0, "DEPLOYMENT")
    lines = [header]
    tiered = False
    for row in rows:
        tier = "+" if row.get("tiers") else ""
        tiered = tiered or bool(tier)
        model = row["model"] + (" (deprecated)" if row.get("deprecated") else "")
        cells = [
            row["provider"],
            model,
            (row.get("input_per_mtok") or _UNPRICED) + tier,
            (row.get("output_per_mtok") or _UNPRICED) + tier,
            row.get("cached_input_per_mtok") or "-",
            f"{row['context_window']:,}" if row.get("context_window") else "-",
            ",".join(row["capabilities"]) or "-",
            row["source"],
        ]
        if route:
            cells.insert(0, row["deployment"])
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)
    if tiered:
        print("+ dearer above an input size (long-context tier): see --json", file=out)
    for row in rows:
        if route and not row["priced"]:
            print(f"{row['deployment']}: {row['notes'][0]}", file=out)


def _preset_rows() -> list[dict[str, Any]]:
    return [
        {
            "provider": preset.name,
            "base_url": preset.base_url,
            "credential_env": preset.key_env or None,
            "max_tokens_field": preset.max_tokens_field,
            "stream_usage": preset.stream_usage,
            "renamed": dict(preset.renamed),
            "notes": preset.notes,
        }
        for preset in PRESETS.values()
    ]


def _print_presets(out: TextIO, *, as_json: bool) -> None:
    """The presets table: `provider = "NAME"` in a deployment needs no base_url or key name."""
    rows = _preset_rows()
    if as_json:
        json.dump({"presets": rows}, out, indent=1)
        out.write("\n")
        return
    print(
        f'{len(rows)} OpenAI-compatible presets: a deployment with provider = "NAME" gets '
        "this base URL and key variable unless it sets its own",
        file=out,
    )
    lines = [["PROVIDER", "BASE URL", "KEY", "NOTES"]]
    for row in rows:
        lines.append(
            [row["provider"], row["base_url"], row["credential_env"] or "-", row["notes"] or "-"]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line[:3], widths, strict=True)]
        print("  ".join([*cells, line[3]]).rstrip(), file=out)
