"""gRPC `BillingService`: usage rollups, budgets and ledger pages, served from the store."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from stepline.v1 import billing_service_pb2, billing_service_pb2_grpc
from stepline_billing.budgets import BudgetConfig
from stepline_billing.convert import (
    budget_to_proto,
    entry_to_proto,
    granularity_from_proto,
    kind_from_proto,
    rollup_to_proto,
)
from stepline_billing.queries import budget, evaluation_split, usage_summary
from stepline_billing.store import Cursor, LedgerQuery, LedgerStore
from stepline_keys import Authenticator, AuthError, Scope
from stepline_keys.grpcdoor import abort_for, authorize
from stepline_vocab import wire

__all__ = ["BillingServicer", "decode_page_token", "encode_page_token"]

_DEFAULT_PAGE = 100
_MAX_PAGE = 1000


def encode_page_token(cursor: Cursor) -> str:
    """Opaque token for the position after `cursor`."""
    raw = json.dumps([cursor.occurred_at.isoformat(), cursor.usage_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> Cursor:
    """The cursor of a token; ValueError when it was not made by `encode_page_token`."""
    try:
        when, usage_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return Cursor(datetime.fromisoformat(when), str(usage_id))
    except (ValueError, TypeError) as error:
        raise ValueError("page_token is not one this server issued") from error


def _range(
    request: billing_service_pb2.GetUsageRequest | billing_service_pb2.ListLedgerRequest,
) -> tuple[datetime | None, datetime | None]:
    start = request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None
    end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
    return start, end


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """Answers from the ledger store (blocking DB calls run in a worker thread).

    Every call proves an API key with `usage:read`; it reads its own tenant only (an empty
    `tenant_id` means the key's tenant, another tenant's is PERMISSION_DENIED).
    """

    def __init__(
        self,
        store: LedgerStore,
        budgets: BudgetConfig,
        currency: str,
        clock: Callable[[], datetime],
        authenticator: Authenticator,
    ) -> None:
        self._store = store
        self._budgets = budgets
        self._currency = currency
        self._clock = clock
        self.authenticator = authenticator

    async def _tenant(self, requested: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        principal = await authorize(context, self.authenticator, Scope.USAGE_READ)
        try:
            return principal.tenant_for(requested)
        except AuthError as error:
            await abort_for(context, error)

    async def GetUsage(  # noqa: N802 (gRPC method name)
        self,
        request: billing_service_pb2.GetUsageRequest,
        context: grpc.aio.ServicerContext[
            billing_service_pb2.GetUsageRequest, billing_service_pb2.GetUsageResponse
        ],
    ) -> billing_service_pb2.GetUsageResponse:
        """Rollups and totals of a tenant (optionally one run) over a time range."""
        tenant_id = await self._tenant(request.tenant_id, context)
        start, end = _range(request)
        summary = await asyncio.to_thread(
            usage_summary,
            self._store,
            tenant_id,
            granularity_from_proto(request.granularity),
            request.run_id,
            start,
            end,
        )
        split = await asyncio.to_thread(
            evaluation_split, self._store, tenant_id, request.run_id, start, end
        )
        now = self._clock()
        return billing_service_pb2.GetUsageResponse(
            rollups=[rollup_to_proto(r, self._currency, now) for r in summary.rollups],
            total_usage=wire.tokens_to_proto(summary.tokens),
            total_cost=wire.money_to_proto(summary.cost, self._currency),
            total_calls=summary.calls,
            total_failures=summary.failures,
            total_unpriced_calls=summary.unpriced_calls,
            production_cost=wire.money_to_proto(split.production, self._currency),
            evaluation_cost=wire.money_to_proto(split.evaluation, self._currency),
            evaluation_runs=split.evaluation_runs,
            evaluation_calls=split.evaluation_calls,
        )

    async def GetBudget(  # noqa: N802 (gRPC method name)
        self,
        request: billing_service_pb2.GetBudgetRequest,
        context: grpc.aio.ServicerContext[
            billing_service_pb2.GetBudgetRequest, billing_service_pb2.GetBudgetResponse
        ],
    ) -> billing_service_pb2.GetBudgetResponse:
        """The tenant's current budget."""
        tenant_id = await self._tenant(request.tenant_id, context)
        state = await asyncio.to_thread(
            budget, self._store, self._budgets, tenant_id, self._clock()
        )
        return billing_service_pb2.GetBudgetResponse(budget=budget_to_proto(state, self._currency))

    async def ListLedger(  # noqa: N802 (gRPC method name)
        self,
        request: billing_service_pb2.ListLedgerRequest,
        context: grpc.aio.ServicerContext[
            billing_service_pb2.ListLedgerRequest, billing_service_pb2.ListLedgerResponse
        ],
    ) -> billing_service_pb2.ListLedgerResponse:
        """One page of ledger records, oldest first."""
        tenant_id = await self._tenant(request.tenant_id, context)
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be >= 0")
        size = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        after = None
        if request.page_token:
            try:
                after = decode_page_token(request.page_token)
            except ValueError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        start, end = _range(request)
        query = LedgerQuery(tenant_id, request.run_id, start, end, kind_from_proto(request.kind))
        # One extra row tells whether another page exists.
        rows = await asyncio.to_thread(self._store.entries, query, size + 1, after)
        page, more = rows[:size], len(rows) > size
        token = ""
        if more:
            last = page[-1].usage
            token = encode_page_token(Cursor(last.occurred_at, last.usage_id))
        return billing_service_pb2.ListLedgerResponse(
            records=[entry_to_proto(e) for e in page], next_page_token=token
        )
