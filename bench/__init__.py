"""Benchmarks: `make bench` (bench/bench_stack.py) measures the real stack against bare Celery."""
