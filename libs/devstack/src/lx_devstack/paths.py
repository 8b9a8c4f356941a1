"""Where the local dev stack keeps its state, plus small pid, port and lock helpers.

Everything lives under ``<project root>/.local`` (created on demand, ignored by git),
so brokers and databases survive between runs and are found again by any process.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _is_workspace_root(directory: Path) -> bool:
    pyproject = directory / "pyproject.toml"
    if not pyproject.is_file():
        return False
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return "workspace" in data.get("tool", {}).get("uv", {})


@functools.cache
def project_root() -> Path:
    """The uv workspace root: the nearest parent whose pyproject.toml has ``[tool.uv.workspace]``.

    This file is searched from first (right for the editable workspace install), then
    the working directory (right when the package was installed somewhere else).
    """
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for directory in (start, *start.parents):
            if _is_workspace_root(directory):
                return directory
    raise RuntimeError("no pyproject.toml with [tool.uv.workspace] above this file or the cwd")


def _subdir(*parts: str) -> Path:
    path = state_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """``<root>/.local``: local state of the dev stack; ignores itself in git."""
    path = project_root() / ".local"
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        # A self-ignoring folder keeps git clean without editing the repo's .gitignore.
        ignore.write_text("# local dev-stack state (lx_devstack)\n*\n", encoding="utf-8")
    return path


def kafka_dir() -> Path:
    """Kafka jars and the local broker's config and data."""
    return _subdir("kafka")


def pg_dir() -> Path:
    """The local PostgreSQL server's data directory and socket."""
    return _subdir("pg")


def logs_dir() -> Path:
    """Log files of the local servers and services."""
    return _subdir("logs")


def run_dir() -> Path:
    """Pidfiles of the processes the dev stack started."""
    return _subdir("run")


# --- processes, ports and locks ---------------------------------------------------------


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process, or None if it is gone or a zombie."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            # Field 3 of stat is the state; after the ")" that closes the command name.
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        # A killed child of a process that never reaps it (or of a PID 1 that does not
        # reap orphans, as in some containers) stays a zombie: count it as gone.
        if state in ("Z", "X"):
            return None
        return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    # No /proc (macOS): ask ps.
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else ""


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        # EPERM: it exists but belongs to another user.
        return exc.errno == errno.EPERM
    return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live (non-zombie) process."""
    return _pid_exists(pid) and process_cmdline(pid) is not None


def pid_zombie(pid: int) -> bool:
    """True if ``pid`` has exited but was not reaped yet (kill(pid, 0) still succeeds)."""
    return _pid_exists(pid) and process_cmdline(pid) is None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (empty if there are none or it is gone)."""
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(word) for word in out.split()]


def read_pidfile(path: Path) -> int | None:
    """The pid in the first line of ``path``, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (blocks): one starter per server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
