"""What every benchmark shares: the machine line and the ``--quick`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from collections.abc import Callable, Coroutine
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
