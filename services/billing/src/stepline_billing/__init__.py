"""Stepline billing: usage ledger, budgets, rollups, query surface."""
