"""Run named benchmarks, print their figures and write ``bench/results/<name>.json``."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SKIP = {"__init__", "__main__", "harness", "sweeps"}


def available() -> list[str]:
    return sorted(p.stem for p in Path(__file__).resolve().parent.glob("*.py") if p.stem not in SKIP)


def machine() -> str:
    """A one-line description of the machine the figures were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    memory = f"{_memory_gib():.0f} GiB"
    return f"{platform.machine()} {os.cpu_count()} cores, {memory}, {gpu}, Python {platform.python_version()}"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as handle:
            return int(handle.readline().split()[1]) / 2**20
    except OSError:
        return float("nan")


def _flatten(figures: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def format_figures(figures: dict) -> str:
    rows = _flatten(figures)
    width = max((len(k) for k, _ in rows), default=10)
    lines = []
    for key, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key.ljust(width)}  {shown}")
    return "\n".join(lines)


def run(name: str) -> dict:
    """Run one benchmark, print its figures, write its JSON; returns the figures."""
    module = importlib.import_module(f"bench.{name}")
    start = time.perf_counter()
    figures = module.run()
    payload = {
        "benchmark": name,
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "figures": figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"== {name} ({payload['machine']}; {payload['wall_seconds']} s)")
    print(format_figures(figures))
    print(f"-> {RESULTS.name}/{name}.json")
    return payload


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


@contextlib.contextmanager
def busy_core(busy: bool = True):
    """Keep one core busy with a second process while the block runs (a loaded machine)."""
    import multiprocessing

    if not busy:
        yield
        return
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        yield
    finally:
        stop.set()
        spinner.join()
