"""Run ``accelerate launch`` on 2 CPU processes for tests (``from _launch import launch_2proc``).

The port is picked by binding port 0 and releasing it, so another process can take it before
the launcher's rendezvous binds it. Such a launch fails before any of our code runs; it is
retried once on a new port, and only when its output names a socket/rendezvous failure, so a
real failure of the command under test still fails the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what torch.distributed / torch elastic print when the rendezvous port was not usable
PORT_FAILURES = ("EADDRINUSE", "Address already in use", "DistNetworkError",
                 "server socket has failed", "errno: 98", "Connection refused")


def free_port() -> int:
    """A port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_port_failure(output: str) -> bool:
    """Whether a failed launch's output blames the rendezvous socket."""
    return any(m in output for m in PORT_FAILURES)


def launch_2proc(args: list[str], timeout: float, env: dict | None = None,
                 retries: int = 1, config: str = "cpu_2proc.yaml") -> subprocess.CompletedProcess:
    """``accelerate launch --config_file configs/accelerate/CONFIG ARGS`` (DDP by default;
    ``cpu_2proc_fsdp.yaml``, ``cpu_2proc_zero3.yaml``) on a free port (OMP_NUM_THREADS=1);
    retried on a new port after a port failure, ``retries`` times."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env or {})}
    for _ in range(retries + 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / config),
               "--main_process_port", str(free_port()), *args]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode == 0 or not is_port_failure(res.stdout + res.stderr):
            return res
    return res
