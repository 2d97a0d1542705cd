"""Stepline planner: turns goals into runs and drives them step by step, exactly once."""
