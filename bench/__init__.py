"""Benchmarks: each module ``bench/<name>.py`` has ``run() -> dict`` of measured figures."""
