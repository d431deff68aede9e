"""Real servers for tests: a local S3 (moto in server mode) and a real 2-node Ray cluster with a job server.

Loaded for the whole suite by ``pytest_plugins = ["tests.servers"]`` in tests/conftest.py. Both fixtures are
session-scoped and opt-in (not autouse): a test pays for them only when it names them.

``s3_server``
    ``moto_server`` (a subprocess, not ``ThreadedMotoServer``, so that an in-process ``moto.mock_aws`` in some other
    test can neither intercept nor reset it) on 127.0.0.1 and a free port. For the rest of the session it sets
    ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID=testing``, ``AWS_SECRET_ACCESS_KEY=testing``,
    ``AWS_DEFAULT_REGION=us-east-1`` (and ``AWS_EC2_METADATA_DISABLED=true``) in ``os.environ``; they are restored at
    the end of the session. botocore (>= 1.31), hence s3fs/aiobotocore and boto3, and pyarrow's own S3 filesystem
    (which Ray Data uses for ``s3://`` paths) all honour ``AWS_ENDPOINT_URL``: plain ``s3://bucket/key`` URLs and
    ``s3fs.S3FileSystem()`` with no storage options reach moto, no ``fsspec.config`` entry needed. s3fs caches
    filesystem instances; the fixture clears that cache when it sets and when it restores the variables.

    ``AWS_ENDPOINT_URL`` reaches Ray worker processes only if Ray was started *after* the fixture set it, because a
    raylet hands its own environment to the workers it starts. A test that uses both ``s3_server`` and the suite's
    in-process ``ray_session`` must therefore name ``s3_server`` first (pytest sets up same-scope fixtures in argument
    order), e.g. ``def test_x(s3_server, ray_session)``. If Ray may already be running (an earlier test started
    ``ray_session``), pass the variables explicitly: ``ray.remote(runtime_env={"env_vars": s3_server.env})(fn)``,
    or ``ray.data.read_parquet(..., ray_remote_args={"runtime_env": {"env_vars": s3_server.env}})``, or give
    ``storage_options=s3_server.storage_options`` to fsspec/s3fs directly.

    Gotcha: ``fsspec.open("s3://no-such-bucket/k", "w")`` creates the bucket (fsspec's ``auto_mkdir`` defaults to
    True for write modes and s3fs's ``makedirs`` creates buckets); ``fs.open(..., "wb")``, ``fs.pipe`` and
    ``fsspec.open(..., auto_mkdir=False)`` raise ``FileNotFoundError: The specified bucket does not exist``.

``ray_cluster_2node``
    A real Ray cluster of two nodes (a head and a worker, ``--num-cpus=1`` each) started with this venv's ``ray``
    CLI, every port free-picked, the dashboard (job server) on ``http://127.0.0.1:<port>``. It always starts
    ``s3_server`` first, so both nodes (hence every task, actor and job on them) see the S3 variables; ``PATH``
    starts with this venv's ``bin``, so a job's ``python`` is the venv's. It coexists with ``ray_session``
    (different ports and temp dirs); the test process itself never connects to the cluster: use ``submit()``
    (``ray job submit``), ``nodes()`` or ``alive_nodes()``. Things learnt the hard way:

    * Ray advertises the machine's own IP for its nodes (it replaces a ``--node-ip-address`` of 127.0.0.1) and its
      GCS and raylets listen on all interfaces; only the dashboard is bound to loopback.
    * ``RAY_AUTH_MODE=disabled`` on both nodes and the CLI: Ray 2.60's ``ray start --head`` turns token
      authentication on when ``~/.ray/auth_token`` exists (any local ``ray.init()`` writes one), ``ray start
      --address`` on the worker node does not, and the worker then fails with ``InvalidAuthToken``.
    * One ``--temp-dir`` per node: with a shared one both nodes share the session dir, and the worker node's
      runtime-env agent deletes a job's unpacked ``working_dir`` once its own tasks are done with it, while the
      driver on the head node still runs in it (``os.getcwd()`` then raises ``FileNotFoundError``).
    * Teardown never runs ``ray stop``, which kills every Ray on the machine (the in-process ``ray_session`` and
      other people's test runs included). The nodes get an environment marker (``WMSYNTH_TEST_RAY_CLUSTER=<uuid>``)
      that every process Ray starts for them inherits (raylet-started workers run in process groups of their own,
      so a process-group kill is not enough); teardown SIGTERMs exactly those processes, then SIGKILLs what is left
      after 5 s (gcs_server and the autoscaler monitor can ignore SIGTERM).

    A pytest killed with SIGKILL leaves the cluster running: ``grep -l WMSYNTH_TEST_RAY_CLUSTER /proc/[0-9]*/environ``
    finds its processes, ``/tmp/wmsray-*`` its files.

Usage::

    from tests.servers import REPO_ROOT

    @pytest.mark.slow
    def test_job_reads_s3(s3_server, ray_cluster_2node):
        url = s3_server.bucket("inputs")                   # "s3://inputs", an empty bucket on moto
        s3fs.S3FileSystem().pipe(f"{url}/x.txt", b"data")   # no options needed: AWS_ENDPOINT_URL is set
        res = ray_cluster_2node.submit("python -m pipeline.cli --help", working_dir=REPO_ROOT,
                                       env_vars={"INPUT": url}, timeout_s=300)
        assert res.returncode == 0, res.logs               # res.status, res.logs, res.elapsed_s ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

#: Paths a job's ``working_dir`` upload always leaves out (Ray also honours .gitignore, which lists .venv).
DEFAULT_EXCLUDES = [".venv", ".venv/**", ".git", ".git/**", ".tools", ".tools/**", "runs", "runs/**",
                    "**/__pycache__", "*.pyc", ".pytest_cache", "benchmarks/out", "shared"]

_MARKER_VAR = "WMSYNTH_TEST_RAY_CLUSTER"


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all bound at once, so never the same port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _http_json(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _clear_s3fs_cache() -> None:
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


def _signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# --------------------------------------------------------------------------------------------------------------------
# S3 (moto)
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class S3Server:
    """A running ``moto_server``: ``endpoint_url``, the ``env`` the fixture exported, and helpers."""

    endpoint_url: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen
    start_s: float = 0.0

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs storage options that reach this server without relying on the environment."""
        return {"key": self.env["AWS_ACCESS_KEY_ID"], "secret": self.env["AWS_SECRET_ACCESS_KEY"],
                "endpoint_url": self.endpoint_url, "client_kwargs": {"region_name": self.env["AWS_DEFAULT_REGION"]}}

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 chars, lowercase, digits, '-', '.'), if missing; return ``"s3://name"``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        _clear_s3fs_cache()  # s3fs caches listings (dircache) per instance; a new bucket must be visible
        return f"s3://{name}"

    def reset(self) -> None:
        """Delete every bucket and object (moto's reset API); call it from a test that needs an empty S3."""
        _http_json(f"{self.endpoint_url}/moto-api/reset", method="POST")
        _clear_s3fs_cache()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_moto_server(log_dir: Path, timeout_s: float = 60.0, attempts: int = 3) -> S3Server:
    """Start ``moto_server -H 127.0.0.1 -p <free port>``; wait until it answers HTTP."""
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        pytest.skip(f"{exe} not installed (dev group: moto[server])")
    t0 = time.monotonic()
    last_log = None
    for attempt in range(attempts):
        port = free_ports(1)[0]
        log_path = log_dir / f"moto-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - held by the child
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.1)
        else:
            last_log = _tail(log_path)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue  # port taken in the meantime or slow start: another port
        if proc.poll() is not None:
            last_log = _tail(log_path)
            continue
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        return S3Server(endpoint_url=endpoint, env=env, log_path=log_path, proc=proc,
                        start_s=time.monotonic() - t0)
    raise RuntimeError(f"moto_server did not start after {attempts} attempts; last log:\n{last_log}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 on 127.0.0.1 for the session; exports the AWS_* variables (see the module docstring)."""
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    mp = pytest.MonkeyPatch()
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        mp.delenv(key, raising=False)
    for key, value in server.env.items():
        mp.setenv(key, value)
    _clear_s3fs_cache()
    try:
        yield server
    finally:
        mp.undo()
        _clear_s3fs_cache()
        server.stop()


# --------------------------------------------------------------------------------------------------------------------
# Ray: a 2-node cluster of separate processes
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JobResult:
    """What ``RayCluster.submit`` returns."""

    submission_id: str
    status: str  # SUCCEEDED, FAILED, STOPPED (or PENDING/RUNNING if it could not be read)
    returncode: int | None  # the entrypoint's exit code (Ray's driver_exit_code), else the CLI's
    logs: str  # the job's own stdout+stderr
    cli_output: str  # what `ray job submit` printed (its messages and the tailed logs)
    cli_returncode: int
    elapsed_s: float
    message: str = ""


@dataclasses.dataclass
class RayCluster:
    """A running 2-node cluster: ``address`` (GCS, host:port), ``dashboard_url`` (for ``ray job submit``)."""

    address: str
    dashboard_url: str
    env: dict[str, str]  # the complete environment both nodes were started with
    temp_dir: Path
    marker: str
    start_s: float = 0.0
    stopped: bool = False

    def nodes(self) -> list[dict]:
        """The cluster's nodes from the dashboard's state API (``node_id``, ``state``, ``resources_total``...)."""
        body = _http_json(f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=true", timeout=20)
        return body["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def _cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("PYTEST_")}
        env["RAY_AUTH_MODE"] = "disabled"
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def submit(self, entrypoint: str, working_dir: str | os.PathLike | None = None,
               env_vars: dict[str, str] | None = None, timeout_s: float = 300.0,
               excludes: list[str] | None = None, runtime_env: dict[str, Any] | None = None) -> JobResult:
        """Run ``ray job submit --address <dashboard> --runtime-env-json ... -- <entrypoint>`` and wait for the end.

        ``entrypoint`` is a shell command line, run by ``/bin/sh`` on the head node in the job's ``working_dir``.
        ``working_dir`` is uploaded (``DEFAULT_EXCLUDES`` plus ``excludes`` left out; Ray also drops what
        .gitignore lists). ``env_vars`` are added to the job's environment (the nodes already carry the S3
        variables). ``runtime_env`` entries are merged last. On timeout the job is stopped and ``TimeoutError``
        raised. ``ray job submit`` joins the words after ``--`` with ``shlex.join``, which would quote shell syntax
        (``&&``, ``$VAR``, ``>``): an entrypoint that is not already in that canonical form is passed as
        ``sh -c '<entrypoint>'``, so it runs exactly as written.
        """
        words = shlex.split(entrypoint)
        if shlex.join(words) != entrypoint.strip():
            words = ["sh", "-c", entrypoint]
        renv: dict[str, Any] = {}
        if working_dir is not None:
            renv["working_dir"] = str(Path(working_dir).resolve())
            renv["excludes"] = DEFAULT_EXCLUDES + list(excludes or [])
        if env_vars:
            renv["env_vars"] = dict(env_vars)
        renv.update(runtime_env or {})
        sid = f"wmsynth-test-{uuid.uuid4().hex[:12]}"
        cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard_url, "--submission-id", sid,
               "--runtime-env-json", json.dumps(renv), "--", *words]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self._cli_env(), cwd=str(self.temp_dir), start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            with contextlib.suppress(OSError):
                _http_json(f"{self.dashboard_url}/api/jobs/{sid}/stop", method="POST")
            raise TimeoutError(f"job {sid} ({entrypoint!r}) not finished after {timeout_s} s; logs so far:\n"
                               f"{self._job_logs(sid)}\n--- ray job submit ---\n{out.decode(errors='replace')}")
        elapsed = time.monotonic() - t0
        info: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            info = _http_json(f"{self.dashboard_url}/api/jobs/{sid}")
        code = info.get("driver_exit_code")
        return JobResult(submission_id=sid, status=str(info.get("status", "UNKNOWN")),
                         returncode=code if code is not None else proc.returncode, logs=self._job_logs(sid),
                         cli_output=out.decode(errors="replace"), cli_returncode=proc.returncode,
                         elapsed_s=elapsed, message=str(info.get("message") or ""))

    def _job_logs(self, sid: str) -> str:
        try:
            return _http_json(f"{self.dashboard_url}/api/jobs/{sid}/logs").get("logs", "")
        except (OSError, ValueError):
            return ""

    def pids(self) -> list[int]:
        """Every live process started for this cluster (found by the environment marker)."""
        return _pids_with_env(_MARKER_VAR, self.marker)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process of this cluster, SIGKILL what is left after ``grace_s``; remove the temp dir."""
        if self.stopped:
            return
        self.stopped = True
        _signal_pids(self.pids(), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.2)
        for _ in range(3):  # gcs_server and the autoscaler monitor may ignore SIGTERM; new workers may appear
            left = self.pids()
            if not left:
                break
            _signal_pids(left, signal.SIGKILL)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids_with_env(var: str, value: str) -> list[int]:
    needle = f"{var}={value}".encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def start_ray_cluster(extra_env: dict[str, str] | None = None, num_cpus_per_node: int = 1, num_nodes: int = 2,
                      object_store_bytes: int = 256 * 1024**2, timeout_s: float = 240.0) -> RayCluster:
    """Start a head and ``num_nodes - 1`` worker nodes with the venv's ``ray`` CLI; wait until all are ALIVE."""
    ray_exe = VENV_BIN / "ray"
    marker = uuid.uuid4().hex
    temp_dir = Path(tempfile.mkdtemp(prefix="wmsray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("PYTEST_")}
    env.update(extra_env or {})
    env.update({
        _MARKER_VAR: marker,
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    })
    (gcs_port, dash_port, client_port, head_agent_port, *worker_agent_ports) = free_ports(3 + num_nodes)
    common = [f"--num-cpus={num_cpus_per_node}", "--num-gpus=0", f"--object-store-memory={object_store_bytes}",
              "--disable-usage-stats"]
    # One --temp-dir per node: with a shared one both nodes use the same session dir, and the worker node's
    # runtime-env agent deletes a job's unpacked working_dir (runtime_resources/working_dir_files/...) when its own
    # tasks release it, while the driver on the head node still runs in it.
    head = [str(ray_exe), "start", "--head", f"--port={gcs_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={head_agent_port}", f"--temp-dir={temp_dir / 'head'}", *common]
    workers = [[str(ray_exe), "start", f"--address=127.0.0.1:{gcs_port}", f"--dashboard-agent-listen-port={port}",
                f"--temp-dir={temp_dir / f'worker{i}'}", *common]
               for i, port in enumerate(worker_agent_ports[: num_nodes - 1])]
    cluster = RayCluster(address=f"127.0.0.1:{gcs_port}", dashboard_url=f"http://127.0.0.1:{dash_port}", env=env,
                         temp_dir=temp_dir, marker=marker)
    t0 = time.monotonic()
    try:
        for name, cmd in [("head", head), *((f"worker{i}", w) for i, w in enumerate(workers))]:
            log_path = temp_dir / f"ray-start-{name}.log"
            with open(log_path, "wb") as log:
                # its own session: Ctrl-C on pytest does not reach the daemons; teardown stops them by marker
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(temp_dir), start_new_session=True,
                                    timeout=max(10.0, timeout_s - (time.monotonic() - t0))).returncode
            if rc != 0:
                raise RuntimeError(f"`ray start` ({name}) exited {rc}:\n{_tail(log_path)}")
        alive: list[dict] = []
        while time.monotonic() - t0 < timeout_s:
            with contextlib.suppress(OSError, ValueError, KeyError):
                alive = cluster.alive_nodes()
                if len(alive) >= num_nodes:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{num_nodes} nodes not alive after {timeout_s} s (alive: {len(alive)})")
    except BaseException:
        cluster.stop()
        raise
    cluster.start_s = time.monotonic() - t0
    return cluster


@pytest.fixture(scope="session")
def ray_cluster_2node(s3_server):
    """A real 2-node Ray cluster (1 CPU per node) with a job server; the nodes see the S3 server's variables."""
    cluster = start_ray_cluster(extra_env=s3_server.env, num_nodes=2)
    try:
        yield cluster
    finally:
        cluster.stop()
