"""Token authentication on the cluster path (issue 17, item 2), on loopback: a head and worker nodes
started with the `ray start` commands of cluster.yaml, each with its own home as on its own machine.

A worker node whose home holds the token (what cluster.yaml's file_mounts carries there) joins; one
without it is refused. A job submitted with the token (RAY_AUTH_MODE=token and ~/.ray/auth_token, as
README says) runs on the cluster; one without is refused. The job is a small driver that connects
and runs a task on the joined worker node: the part auth decides (a raysemi stage behind it is the
same ray.init; the suite runs those elsewhere). One machine stands in for three, so the commands are
adapted only where one machine needs it: no `ulimit` (this machine's hard limit may be lower), no
autoscaler config, 127.0.0.1 for $RAY_HEAD_IP, free ports, and a private RAY_TMPDIR.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's copy of psutil on the path)
import yaml

import psutil  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = [REPO / "cluster.yaml", REPO / "clusters" / "gcp.yaml"]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_start_line(commands: list[str]) -> str:
    (line,) = [c for c in commands if "ray start" in c]
    return line


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_node_starts_with_token_auth_and_the_shared_token(path):
    cfg = yaml.safe_load(path.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token ray start" in _ray_start_line(cfg[key]), key
    assert "--dashboard-host=127.0.0.1" in _ray_start_line(cfg["head_start_ray_commands"])
    # the one token, carried from the machine that runs `ray up` to every node's default token path
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def _on_one_machine(line: str, gcs_port: int, extra: str) -> str:
    line = re.sub(r"^ulimit -n \d+;\s*", "", line)
    line = re.sub(r"\s--autoscaling-config=\S+", "", line)
    line = line.replace("--port=6379", f"--port={gcs_port}").replace("$RAY_HEAD_IP:6379", f"127.0.0.1:{gcs_port}")
    return line.replace("ray start", f"{RAY} start", 1) + " " + extra


def _stop(tmpdir: str) -> None:
    """Kill this test's Ray processes only (`ray stop` would kill every Ray on the machine): those started
    with its RAY_TMPDIR in their environment (every process of its nodes inherits it)."""
    mine = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("RAY_TMPDIR") == tmpdir:
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    for proc in mine:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=30)


@pytest.fixture
def cluster(tmp_path):
    """A head started as cluster.yaml starts it; yields a function starting a worker node the same way
    with a given home (and token, if any). This test's Ray processes are killed at the end."""
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    tmpdir = tempfile.mkdtemp(prefix="rs-auth-", dir="/tmp")  # Ray's socket paths must stay short
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(RAY_TMPDIR=tmpdir, PYTHONPATH=str(REPO))

    def env(home: Path, **extra) -> dict:
        home.mkdir(parents=True, exist_ok=True)
        return {**base, "HOME": str(home), **extra}

    # the user's machine: one token, made once (README: ray get-auth-token --generate)
    user = tmp_path / "user"
    out = subprocess.run([RAY, "get-auth-token", "--generate"], env=env(user), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (user / ".ray" / "auth_token").is_file(), out.stderr
    token = (user / ".ray" / "auth_token").read_text()

    def node_home(name: str, node_token: str | None) -> Path:
        home = tmp_path / name
        if node_token:  # what file_mounts copies to /home/ray/.ray/auth_token
            (home / ".ray").mkdir(parents=True)
            (home / ".ray" / "auth_token").write_text(node_token)
        return home

    gcs, dashboard = _free_port(), _free_port()
    head = _on_one_machine(_ray_start_line(cfg["head_start_ray_commands"]), gcs,
                           f"--num-cpus=1 --dashboard-port={dashboard} --dashboard-agent-listen-port={_free_port()} "
                           f"--ray-client-server-port={_free_port()} --include-dashboard=true")

    def start_worker(name: str, node_token: str | None, resource: str, line: str | None = None):
        line = _on_one_machine(line or _ray_start_line(cfg["worker_start_ray_commands"]), gcs,
                               f"--num-cpus=1 --resources='{{\"{resource}\": 1}}' "
                               f"--dashboard-agent-listen-port={_free_port()}")
        try:
            done = subprocess.run(["bash", "-c", line], env=env(node_home(name, node_token)), capture_output=True,
                                  text=True, timeout=90)
            return done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:  # still retrying to join: not a member either
            return None, f"{exc.stdout or ''}{exc.stderr or ''}"

    try:
        out = subprocess.run(["bash", "-c", head], env=env(node_home("head", token)), capture_output=True, text=True,
                             timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        yield {"start_worker": start_worker, "env": env, "user": user, "dashboard": dashboard, "token": token}
    finally:
        _stop(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _alive_nodes(cluster, resources: list[str]) -> list[int]:
    """How many alive nodes offer each resource, asked with the user's token (one process, one ray.init)."""
    code = ("import ray; ray.init(address='auto'); "
            f"print(*[sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get(r)) for r in {resources!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=cluster["env"](cluster["user"], RAY_AUTH_MODE="token"))
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(v) for v in out.stdout.strip().splitlines()[-1].split()]


def test_nodes_and_jobs_need_the_token(cluster, tmp_path):
    plain = _ray_start_line(yaml.safe_load((REPO / "cluster.yaml").read_text())["worker_start_ray_commands"])
    start = cluster["start_worker"]
    with ThreadPoolExecutor(4) as pool:  # the four nodes start at once, as a cluster's would
        joined = pool.submit(start, "worker", cluster["token"], "joined")
        # no token: the node stops before it reaches the head
        no_token = pool.submit(start, "no-token", None, "no_token")
        # another token, and a node started without token mode (the YAML's line less RAY_AUTH_MODE): the head refuses them
        refused = [pool.submit(start, "other-token", "0" * len(cluster["token"]), "other_token"),
                   pool.submit(start, "no-auth-mode", None, "no_auth_mode", line=plain.replace("RAY_AUTH_MODE=token ", ""))]
        code, text = joined.result()
        assert code == 0, text[-2000:]
        code, text = no_token.result()
        assert code not in (0, None) and re.search(r"no authentication token", text, re.I), text[-2000:]
        for f in refused:
            f.result()
    deadline = time.time() + 30
    while _alive_nodes(cluster, ["joined"]) != [1] and time.time() < deadline:
        time.sleep(1)
    time.sleep(3)  # a refused node that got through would register within a few seconds too
    assert _alive_nodes(cluster, ["joined", "no_token", "other_token", "no_auth_mode"]) == [1, 0, 0, 0]

    # the dashboard (and its job API) listens on loopback only
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == cluster["dashboard"]}
    assert listening == {"127.0.0.1"}, listening

    job = ("import ray; ray.init(); "
           "print('on', ray.get(ray.remote(resources={'joined': 1})(lambda: 'the joined worker').remote()))")
    submit = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{cluster['dashboard']}", "--",
              sys.executable, "-c", job]
    clients = {"the token": (cluster["user"], {"RAY_AUTH_MODE": "token"}),
               "no token file": (tmp_path / "no-token-file", {"RAY_AUTH_MODE": "token"}),
               "no auth mode": (cluster["user"], {})}
    def submitted(env: dict) -> subprocess.CompletedProcess:
        """`ray job submit`, again while the head answers that its job agent is not up yet (Ray's own
        "please try again later", seen once when the head had just started)."""
        for _ in range(10):
            out = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in out.stdout + out.stderr:
                return out
            time.sleep(2)
        return out

    with ThreadPoolExecutor(len(clients)) as pool:  # the three clients submit at once
        runs = {name: pool.submit(submitted, cluster["env"](home, **extra)) for name, (home, extra) in clients.items()}
        outs = {name: run.result() for name, run in runs.items()}
    ok = outs.pop("the token")
    assert ok.returncode == 0 and "on the joined worker" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
    for name, out in outs.items():
        assert out.returncode != 0 and "on the joined worker" not in out.stdout, (name, out.stdout[-2000:])
        assert re.search(r"auth|token|401|403", out.stdout + out.stderr, re.I), (name, (out.stdout + out.stderr)[-2000:])
