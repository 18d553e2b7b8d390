"""A real two-node Ray cluster on 127.0.0.1 for tests: a head and one worker node, each a
`ray start --block` process of the venv's `ray` in its own session and temp dir.

Every process a node starts (raylet, agents, worker processes; workers get their own process
group, so a process-group kill would miss them) descends from its `ray start` process, which is
how one node, and only that node, is killed. `ray stop` is never used: it takes no address or
temp dir and would end every Ray process on the machine, other users' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
START_TIMEOUT = 120  # seconds for both nodes to be up and registered


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 (all held open together while picking)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def ray_env(token: Path) -> dict[str, str]:
    """The environment of the nodes and of the driver: this venv's tools first, workers on this
    interpreter (no `uv run` runtime env), no inherited Ray, MLflow or DVC settings, and token
    authentication with the cluster's own token (not the user's ~/.ray/auth_token: a head
    started without RAY_AUTH_MODE turns token auth on if that file exists, and a worker node
    started without it then cannot join)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_")) and k != "DVC_ROOT"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


@dataclass
class Node:
    name: str
    temp_dir: Path
    log: Path
    process: subprocess.Popen | None = None

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and everything it started (raylet, agents, workers)."""
        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def running_tasks(self, function: str) -> list[psutil.Process]:
        """This node's worker processes executing `function` now (Ray titles a worker
        `ray::<function>` while it runs a task, `ray::IDLE` between tasks)."""
        found = []
        for proc in self.processes():
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if title.startswith(f"ray::{function}"):
                found.append(proc)
        return found

    def kill(self) -> None:
        """SIGKILL the node: its `ray start` process, raylet, agents and workers at once."""
        procs = self.processes()
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=30)
        if self.process is not None:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM `ray start --block` (it ends the node's processes), then SIGKILL whatever of
        the node is left after a bounded wait."""
        if self.process is None:
            return
        procs = self.processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            with suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@dataclass
class Cluster:
    """`address` is the head's GCS address for `compare.ray.address`."""

    root: Path
    port: int
    head: Node
    worker: Node
    nodes: list[dict] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token(self) -> Path:
        return self.root / "auth_token"

    def env(self) -> dict[str, str]:
        """The environment for a driver of this cluster."""
        return ray_env(self.token)

    def logs(self) -> str:
        parts = []
        for node in (self.head, self.worker):
            text = node.log.read_text(errors="replace") if node.log.is_file() else ""
            parts.append(f"--- ray start ({node.name}) ---\n{text[-4000:]}")
        return "\n".join(parts)

    def driver_core_log(self, pid: int) -> str:
        """The core-worker log of the driver process `pid` (it connects to the head)."""
        logs = sorted(self.head.temp_dir.glob(f"session_*/logs/python-core-driver-*_{pid}.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    def stop(self) -> None:
        for node in (self.worker, self.head):
            node.stop()


def _start(node: Node, token: Path, args: list[str]) -> None:
    with node.log.open("w") as out:
        node.process = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", "--include-log-monitor=false",
             f"--temp-dir={node.temp_dir}", *args],
            env=ray_env(token), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _node_ports() -> list[str]:
    manager, objects, agent, agent_grpc, runtime_env, metrics = free_ports(6)
    return [
        f"--node-manager-port={manager}", f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
    ]


_ALIVE_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False,
         logging_level="ERROR")
print(json.dumps([n["Resources"] for n in ray.nodes() if n["Alive"]]))
ray.shutdown()
"""


def _alive_nodes(cluster: Cluster) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", _ALIVE_NODES, cluster.address], env=cluster.env(),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        return []
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_cluster(worker_resources: dict[str, float], object_store_bytes: int = 200_000_000):
    """Start the head (1 CPU) and a worker node (1 CPU + `worker_resources`) and wait until
    both are registered. The caller must call `stop()` (also on failure)."""
    root = Path(tempfile.mkdtemp(prefix="clrray-", dir="/tmp"))  # short: unix socket paths
    head = Node("head", root / "head", root / "head.log")
    worker = Node("worker", root / "worker", root / "worker.log")
    port, client_port = free_ports(2)
    cluster = Cluster(root, port, head, worker)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1",
              f"--object-store-memory={object_store_bytes}"]
    cluster.token.write_text(secrets.token_hex(32))
    cluster.token.chmod(0o600)
    try:
        _start(head, cluster.token, [
            "--head", f"--port={port}", f"--ray-client-server-port={client_port}",
            "--include-dashboard=false", *common, *_node_ports(),
        ])
        _start(worker, cluster.token, [
            f"--address={cluster.address}", *common, *_node_ports(),
            f"--resources={json.dumps(worker_resources)}",
        ])
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for node in (head, worker):
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray start ({node.name}) exited\n{cluster.logs()}")
            cluster.nodes = _alive_nodes(cluster)
            if len(cluster.nodes) == 2:
                return cluster
            time.sleep(1)
        raise RuntimeError(f"the two Ray nodes did not come up\n{cluster.logs()}")
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise


def remove(cluster: Cluster) -> None:
    shutil.rmtree(cluster.root, ignore_errors=True)
