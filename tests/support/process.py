"""A real `orpheus-local serve` process on a free loopback port, its output collected as it comes
(a full pipe would stall the server), its memory read from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_replicas(app: str = "orpheus") -> dict[int, str]:
    """This machine's Ray Serve replica processes of app: pid -> deployment (Ray titles them
    ray::ServeReplica:APP:DEPLOYMENT)."""
    prefix = f"ray::ServeReplica:{app}:"
    replicas = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                title = cmdline.read().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if entry.isdigit() and title.startswith(prefix):
            replicas[int(entry)] = title.removeprefix(prefix)
    return replicas


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux), from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None  # collects the output into lines
    state_dir: tempfile.TemporaryDirectory | None = None  # the server's --state-dir, when the test gave none

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has ended and all its output is in lines."""
        code = self.process.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status (the server is killed if it does not stop in time)."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def _collect(process: subprocess.Popen, lines: list[str]) -> None:
    for line in process.stdout:
        lines.append(line)


def serve_command(*flags: str) -> list[str]:
    command = [shutil.which("orpheus-local") or sys.executable, "serve"]
    if command[0] == sys.executable:
        command[1:1] = ["-m", "orpheus_cli.main"]
    return command + list(flags)


def start_server(*flags: str, ready_timeout: float = 180, threads: int = 1) -> ServerProcess:
    """`orpheus-local serve FLAGS --port <free>`, returned once /ready answers 200."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    state_dir = None
    if "--state-dir" not in flags and "ORPHEUS_STATE_DIR" not in env:
        # The v2 job store in a directory of the test's, removed once unused: never in the home directory.
        state_dir = tempfile.TemporaryDirectory(prefix="orpheus-state-")
        flags = (*flags, "--state-dir", state_dir.name)
    process = subprocess.Popen(serve_command(*flags, "--port", str(port)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", state_dir=state_dir)
    server.reader = threading.Thread(target=_collect, args=(process, server.lines), daemon=True)
    server.reader.start()
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.output}")
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the server was not ready after {ready_timeout} s:\n{server.output}")
            try:
                if client.get("/ready").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
