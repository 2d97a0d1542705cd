"""Stepline tool executor: runs tool calls safely, at least once, never a side effect twice."""

__all__: list[str] = []
