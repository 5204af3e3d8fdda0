"""Benchmarks: `python -m bench` (see bench/run.py). One bench_<op>.py file per op registers its cases."""
