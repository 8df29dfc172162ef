"""Benchmarks of `make bench` (`python -m rl_lifecycle.bench`): helpers in `harness`, one module per group."""
