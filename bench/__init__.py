"""Stepline benchmarks: figures printed and written to bench/results/."""
