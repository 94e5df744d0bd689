"""Launching distributed runs for the tests, again on another port when another process took theirs.

- `launch_two_nodes`: ``jukebox-pl run RECIPE`` as two single-process nodes of one machine:
  ``python -m torch.distributed.run --nnodes 2 --nproc-per-node 1`` runs twice (node ranks 0 and 1,
  a rendezvous on 127.0.0.1), each with ``trainer.num_nodes=2 trainer.devices=1``: the same launch as
  two machines of a cluster.
- `run_processes`: a command that starts its ranks with Lightning's own launcher (``trainer.devices=2``).

Both pick a free port, which the run binds a moment later; on a busy machine another process may
take it in between, and the run is then started again on another port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

TESTS = Path(__file__).parent
# What a launch that lost its port to another process says: it is launched again on another port.
PORT_TAKEN = ("address already in use", "eaddrinuse", "failed to bind")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(command: list[str], timeout: float = 300.0, attempts: int = 3, **options: Any) -> CompletedProcess:
    """``subprocess.run(command)`` of a run whose ranks Lightning starts, with ``MASTER_PORT`` set to a free port
    (``options``: those of subprocess.run; output is captured as text)."""
    environment = dict(options.pop("env", None) or os.environ)
    for attempt in range(attempts):
        environment["MASTER_PORT"] = str(free_port())
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, **options)
        taken = any(word in (finished.stdout + finished.stderr).lower() for word in PORT_TAKEN)
        if finished.returncode == 0 or not taken or attempt + 1 == attempts:
            return finished
    raise AssertionError("unreachable")


def launch_two_nodes(recipe: Path, overrides: list[str], timeout: float = 240.0, attempts: int = 3) -> None:
    """Run `recipe` as two single-process nodes and wait for both; fails with their output if either fails.

    The rendezvous port is picked free, then bound by node 0 a moment later: on a busy machine another
    process may take it in between, and the launch is then repeated on another port. A run that has not
    finished after `timeout` seconds (a hang) is killed with its workers.
    """
    for attempt in range(attempts):
        failed = _launch(recipe, overrides, free_port(), timeout)
        if not failed:
            return
        if attempt + 1 == attempts or not any(word in failed.lower() for word in PORT_TAKEN):
            raise AssertionError(failed)


def _launch(recipe: Path, overrides: list[str], port: int, timeout: float) -> str:
    """Both nodes' output where one failed, else an empty string."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    arguments = ["run", str(recipe), "trainer.num_nodes=2", "trainer.devices=1", *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    processes = [
        subprocess.Popen(
            [*launcher, "--node-rank", str(node), "-m", "jukebox_pl.cli", *arguments],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = []
    for process in processes:
        try:
            logs.append(process.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            # torchrun starts each worker in a session of its own: kill the workers, then the launchers.
            running = [each.pid for each in processes if each.poll() is None]
            for pid in [worker for launcher in running for worker in _descendants(launcher)] + running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            logs.append(process.communicate()[0] + f"\n(killed: not finished after {timeout:.0f} s)")
    return "\n".join(
        f"node {node}:\n{log[-2500:]}"
        for node, (process, log) in enumerate(zip(processes, logs, strict=True))
        if process.returncode != 0
    )


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "PID (NAME) STATE PPID ...": the name may hold spaces and brackets, so split after the last ')'
            fields = stat.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found
