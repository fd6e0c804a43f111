"""What is measured: forgetting (per-row, KL to the base), standard errors, FLOPs, and
benchmarks through lm-evaluation-harness."""
