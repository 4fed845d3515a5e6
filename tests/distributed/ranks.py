"""Processes of one process group on the loopback address, started as torchrun starts them, for the tests."""
import os
import socket
import subprocess
import sys
import textwrap

from helpers import HANG_GUARD

WORKER_HEAD = textwrap.dedent("""
    import os, sys, numpy as np, vkloss
    from vkloss import distributed
    process = distributed.init()
    rank, world = process.rank, process.world_size
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: str, world: int, tmp_path, env=None) -> list:
    """`world` processes of `script`, with the environment torchrun gives them, on the loopback address."""
    path = tmp_path / "worker.py"
    path.write_text(WORKER_HEAD + textwrap.dedent(script))
    port = str(free_port())
    processes = []
    for rank in range(world):
        environment = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **(env or {}))
        processes.append(subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env=environment))
    return processes


def finish(processes, timeout=HANG_GUARD) -> list:
    results = []
    for p in processes:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"a rank did not end within {timeout} s: {err[-2000:]}")
        results.append((p.returncode, out, err))
    return results
