"""Pure routing: which deployments of a route may take a request, and in which order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from stepline_pricebook import ModelPrice
from stepline_router.routes import Deployment, Route, Strategy, ToolMode

__all__ = [
    "LatencyEwma",
    "Needs",
    "Plan",
    "RateWindow",
    "Skipped",
    "estimated_cost",
    "output_cap",
    "plan_route",
]

PriceLookup = Callable[[str, str], ModelPrice | None]


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request requires of a deployment."""

    tools: bool
    stream: bool
    input_tokens: int
    max_output_tokens: int = 0
    max_cost: Decimal | None = None
    # An embeddings call: only deployments that serve embeddings, and no chat-only one.
    embeddings: bool = False
    # Output constrained by a JSON schema (`response_format` json_schema).
    json_schema: bool = False
    # Image parts in the input.
    vision: bool = False


@dataclass(frozen=True, slots=True)
class Skipped:
    """A deployment left out of the plan, why, and the kind of reason (see `SkipCause`)."""

    deployment: str
    reason: str
    cause: str = "capability"


@dataclass(frozen=True, slots=True)
class Plan:
    """Deployments to try in order, and the ones filtered out."""

    deployments: tuple[Deployment, ...]
    skipped: tuple[Skipped, ...]


def output_cap(deployment: Deployment, needs: Needs) -> int:
    """Most output tokens a request may get from `deployment`."""
    if needs.embeddings:
        return 0
    cap = deployment.capabilities.max_output_tokens
    return min(cap, needs.max_output_tokens) if needs.max_output_tokens else cap


def estimated_cost(deployment: Deployment, needs: Needs, price: PriceLookup) -> Decimal | None:
    """Worst-case cost of the request on `deployment`; None when unpriced."""
    found = price(deployment.provider, deployment.model)
    if found is None:
        return None
    return found.worst_case(needs.input_tokens, output_cap(deployment, needs))


def _capability_gap(deployment: Deployment, needs: Needs) -> str | None:
    caps = deployment.capabilities
    if needs.embeddings and not caps.embeddings:
        return "does not serve embeddings"
    if not needs.embeddings and not caps.chat:
        return "serves embeddings only"
    if needs.tools and not deployment.serves_tools():
        if deployment.tool_mode is ToolMode.JSON:
            return "does not support tools (tool_mode json needs JSON schema output)"
        return 'does not support tools (set tool_mode = "json" to use it through JSON output)'
    if needs.json_schema and not caps.json_schema:
        return "does not support JSON schema output"
    if needs.vision and not caps.vision:
        return "does not support image input"
    if needs.stream and not caps.streaming:
        return "does not support streaming"
    wanted = needs.input_tokens + (needs.max_output_tokens or 0)
    if wanted > caps.context_window:
        return f"needs ~{wanted} tokens, context window is {caps.context_window}"
    return None


def plan_route(
    route: Route,
    needs: Needs,
    *,
    price: PriceLookup,
    latency: Mapping[str, float],
    random: Callable[[], float],
    unavailable: Callable[[Deployment], str | None] = lambda _: None,
) -> Plan:
    """Filter `route`'s deployments by capability, price and availability, then order them."""
    skipped: list[Skipped] = []
    eligible: list[tuple[Deployment, Decimal | None]] = []
    # The worst-case cost matters only to a cost cap, a cost order or a fallback price cap:
    # otherwise it is not worked out (Decimal arithmetic on every deployment of every call).
    priced = (
        needs.max_cost is not None
        or route.strategy is Strategy.LOWEST_COST
        or route.max_fallback_price_ratio is not None
    )
    for deployment in route.deployments:
        cost = estimated_cost(deployment, needs, price) if priced else None
        cause = "capability"
        reason = _capability_gap(deployment, needs)
        if reason is None and needs.max_cost is not None:
            cause = "cost"
            if cost is None:
                reason = "unpriced, and the request has a cost cap"
            elif cost > needs.max_cost:
                reason = f"worst-case cost {cost:f} exceeds the cap {needs.max_cost:f}"
        if reason is None:
            cause = "unavailable"
            reason = unavailable(deployment)
        if reason is None:
            eligible.append((deployment, cost))
        else:
            skipped.append(Skipped(deployment.name, reason, cause))
    ordered = _order(route.strategy, eligible, latency, random)
    if route.max_fallback_price_ratio is not None and ordered:
        ordered, dearer = _cap_fallbacks(ordered, route.max_fallback_price_ratio)
        skipped.extend(dearer)
    return Plan(tuple(d for d, _ in ordered), tuple(skipped))


def _order(
    strategy: Strategy,
    eligible: list[tuple[Deployment, Decimal | None]],
    latency: Mapping[str, float],
    random: Callable[[], float],
) -> list[tuple[Deployment, Decimal | None]]:
    if strategy is Strategy.LOWEST_COST:
        # Unpriced deployments go last: their cost is unknown, not zero.
        return sorted(eligible, key=lambda e: (e[1] is None, e[1] or Decimal(0)))
    if strategy is Strategy.LOWEST_LATENCY:
        # Deployments never measured sort first so every deployment gets measured once.
        return sorted(eligible, key=lambda e: latency.get(e[0].name, 0.0))
    if strategy is Strategy.WEIGHTED:
        # Efraimidis–Spirakis: sort by u**(1/w) descending = weighted sampling without replacement.
        keyed = [(max(random(), 1e-12) ** (1 / e[0].weight), e) for e in eligible]
        return [e for _, e in sorted(keyed, key=lambda k: -k[0])]
    return list(eligible)


def _cap_fallbacks(
    ordered: list[tuple[Deployment, Decimal | None]], ratio: Decimal
) -> tuple[list[tuple[Deployment, Decimal | None]], list[Skipped]]:
    (first, reference), rest = ordered[0], ordered[1:]
    if reference is None:
        return ordered, []
    kept: list[tuple[Deployment, Decimal | None]] = [(first, reference)]
    dropped: list[Skipped] = []
    limit = reference * ratio
    for deployment, cost in rest:
        if cost is None or cost > limit:
            dropped.append(
                Skipped(
                    deployment.name,
                    f"fallback costs more than {ratio:f}× {first.name}"
                    if cost is not None
                    else "fallback is unpriced and the route caps fallback prices",
                    "cost",
                )
            )
        else:
            kept.append((deployment, cost))
    return kept, dropped


class LatencyEwma:
    """Exponentially weighted moving average of successful attempt latency per deployment."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha
        self._values: dict[str, float] = {}

    def observe(self, deployment: str, seconds: float) -> None:
        """Fold one latency sample in."""
        previous = self._values.get(deployment)
        self._values[deployment] = (
            seconds if previous is None else self._alpha * seconds + (1 - self._alpha) * previous
        )

    def snapshot(self) -> Mapping[str, float]:
        """Current averages by deployment name."""
        return dict(self._values)


class RateWindow:
    """Sliding one-minute window of requests and tokens sent to one deployment."""

    def __init__(self) -> None:
        self._sent: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - 60.0:
            self._tokens -= self._sent.popleft()[1]

    def admits(self, now: float, tokens: int, rpm: int, tpm: int) -> bool:
        """Whether one more request of `tokens` stays within `rpm`/`tpm` (0 = unlimited)."""
        self._expire(now)
        if rpm and len(self._sent) + 1 > rpm:
            return False
        return not (tpm and self._sent and self._tokens + tokens > tpm)

    def record(self, now: float, tokens: int) -> None:
        """Count a request just sent."""
        self._expire(now)
        self._sent.append((now, tokens))
        self._tokens += tokens
