"""The agent every full-stack benchmark runs: a support agent with two tools, four steps a run."""

from __future__ import annotations

__all__ = ["AGENTS", "GOAL"]

# A model turn calling `calculator` and `search_documents` in parallel, the two tool steps, and
# a model turn answering from their results (the offline model on route `local`).
GOAL = "What is 1234 * 5678, and what do the support tickets say about refunds?"

AGENTS = """
[planner]
session_busy = "queue"
finished_retention_s = 3600

[agents.stack]
system_prompt = "You are a support agent. Use the tools, then answer briefly."
route = "local"
tools = ["calculator", "search_documents"]
max_steps = 10
max_parallel_tool_calls = 4
run_deadline_s = 600
model_step_deadline_s = 120
tool_step_deadline_s = 120
max_output_tokens = 200
"""
