"""Benchmarks: the IoT task suite (``bench.tasks``) and, next to it, the runner and report."""
