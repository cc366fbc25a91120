"""Private Redis and PostgreSQL servers for the scale-out tests (no Docker, no shared server).

Each server is Debian's package (``redis-server``, ``postgresql``), installed with ``apt-get``
when missing (``.ci/run`` installs both up front; this is the fallback, under a file lock so
parallel tox envs never run two installs at once). A server listens on 127.0.0.1 on a free
port, keeps its data under a temporary directory and is stopped when the test session ends.

The benchmarks use them too (``benchmarks/scale_out.py``). Outside CI a machine without the packages (and no way to install them) skips the tests that
need them, saying why; under ``CI=true`` that is an error, so a CI run never passes by
skipping them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ("PostgresServer", "RedisServer", "postgres_server", "redis_server")

_APT_LOCK = Path(tempfile.gettempdir()) / "rxinvoke-tests-apt.lock"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unavailable(why: str) -> None:
    try:
        import pytest
    except ImportError:  # a benchmark, not a test session
        raise RuntimeError(why) from None
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs this server: {why}", pytrace=False)
    pytest.skip(why)


def _apt_install(package: str) -> None:
    """``apt-get install package`` (once across processes), when we may."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    with open(_APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["install", "-y", "-qq", package], ["update", "-qq"]):
            done = subprocess.run(["apt-get", *args], env=env, capture_output=True)
            if args[0] == "install" and done.returncode == 0:
                return
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True
        )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within 30 s")


@dataclass
class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 with an append-only file (as production runs
    it: a restart keeps the streams); :meth:`restart` keeps its port."""

    binary: str
    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        _wait_for_port(self.port, self.process, "redis-server", log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _postgres_bin() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 with password (SCRAM) authentication.

    As root, the cluster runs as the ``postgres`` system user (``initdb`` refuses root).
    """

    bin_dir: Path
    directory: Path
    port: int = field(default_factory=_free_port)
    user: str = "rxinvoke"
    password: str = "pg-test-secret-9f3c"
    database: str = "rxinvoke"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def dsn(self) -> str:
        return (
            f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"
        )

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._as_owner(*args), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        pwfile = self.directory / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data),
            "-U", self.user,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E", "UTF8",
            "--no-sync",
        )
        self.start_again()
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", self.user, self.database],
            env=env, capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"createdb failed: {done.stderr}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the cluster; ``mode="fast"`` keeps every commit (the cluster runs with
        ``synchronous_commit=off``: an immediate stop may lose the last ones)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def start_again(self) -> None:
        """Start the stopped cluster again: same data, same port."""
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.directory / "postgres.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200",
            "start",
        )


@contextlib.contextmanager
def redis_server(base: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _apt_install("redis-server")
        binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server is not installed (Debian package redis-server)")
        raise AssertionError("unreachable")
    server = RedisServer(binary, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _apt_install("postgresql")
        bin_dir = _postgres_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL is not installed (Debian package postgresql)")
        raise AssertionError("unreachable")
    # a directory the server's user can reach (pytest's tmp dirs are private to root)
    directory = Path(tempfile.mkdtemp(prefix="rxinvoke-pg-"))
    os.chmod(directory, 0o755)
    server = PostgresServer(bin_dir, directory / "cluster")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
