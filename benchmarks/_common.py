"""What every benchmark shares: the machine line, the ``--quick`` command line and paired
measurement of variants of one workload."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import reactivex


def machine_line(**versions: str) -> str:
    """CPU model, core count, Python and reactivex versions (plus ``versions``: name=version)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    packages = {"reactivex": getattr(reactivex, "__version__", "?"), **versions}
    listed = " · ".join(f"{name} {version}" for name, version in packages.items())
    return f"{model} · {os.cpu_count()} cpus · Python {platform.python_version()} · {listed}"


def cli(main: Callable[[bool], Coroutine[Any, Any, None]], doc: str | None) -> None:
    """Parse ``--quick`` (tiny counts: a smoke run) and run ``main(quick)``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    asyncio.run(main(parser.parse_args().quick))


async def paired(
    variants: Mapping[str, Callable[[int], Awaitable[None]]], runs: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Per variant: (median µs per run, median of its per-round ratios to the first variant).

    A variant is called with a number of runs to do (and whatever must be settled after
    them, such as a flush, inside the call). Each round times ``runs`` runs of every variant
    back to back (the order reversed every
    other round), so the machine's drift — large on shared 2-core machines — hits the
    variants of one round alike; the median of the paired ratios ignores the rounds a burst
    of other work hit (a variant against itself reads 0.97-1.03x here, where best-of-N reads
    0.8-1.2x)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            await variants[name](runs)
            times[name].append((time.perf_counter() - started) / runs * 1e6)
    base = times[names[0]]
    return {
        name: (
            statistics.median(measured),
            statistics.median(a / b for a, b in zip(measured, base, strict=True)),
        )
        for name, measured in times.items()
    }
