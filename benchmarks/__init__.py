"""Benchmarks of tollgate (run as modules: ``python -m benchmarks.bench_pipeline``)."""
