"""Comparing runs: what a run records, reading a sweep back, tables and figures, seeds
pooled, gain and forgetting against tokens."""
