"""Jobs of ``benchmarks/policy_value.py``: subprocesses with their CPU-seconds, run a few at a time with progress and
ETA, and the closed-loop evaluation as a function a process pool can call.

CPU-seconds of a subprocess are those of its whole process tree (the ``wmsynth run`` driver, Ray's GCS, raylet and
workers; ``lerobot-train``), sampled with psutil every ``poll_s`` while it runs: a process that ends between two
samples loses at most ``poll_s`` of its time from the figure.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

logger = logging.getLogger("benchmarks.policy_value")

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
              "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STEP_LINE = re.compile(r"\bstep:\S+")  # one per lerobot-train log line (every --log_freq steps)


class TreeCPU:
    """CPU-seconds (user + system) of a process and all its descendants, by sampling."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last cpu seconds

    def sample(self) -> float:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                times = proc.cpu_times()
                self.seen[(proc.pid, proc.create_time())] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return self.total

    @property
    def total(self) -> float:
        return sum(self.seen.values())


@dataclass
class Job:
    """One subprocess: ``cmd`` with its output in ``log``; ``steps``: lerobot-train's step budget (for progress)."""

    name: str
    cmd: list[str]
    log: Path
    steps: int | None = None
    log_freq: int = 1
    on_done: Callable[[Job, dict[str, Any]], None] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    meter: TreeCPU | None = field(default=None, repr=False)
    started: float = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **THREAD_ENV}, start_new_session=True)
        self.meter, self.started = TreeCPU(self.proc.pid), time.perf_counter()

    def step(self) -> int:
        """Training steps done so far, from the log (lerobot logs a ``step:`` line every ``log_freq`` steps)."""
        try:
            return len(STEP_LINE.findall(self.log.read_text(errors="replace"))) * self.log_freq
        except OSError:
            return 0

    def result(self) -> dict[str, Any]:
        return {"rc": self.proc.returncode, "wall_s": round(time.perf_counter() - self.started, 1),
                "cpu_s": round(self.meter.total, 1), "log": str(self.log)}


def run_jobs(jobs: list[Job], parallel: int, poll_s: float = 1.0, report_s: float = 60.0) -> list[dict[str, Any]]:
    """Run ``jobs``, at most ``parallel`` at a time; log progress with an ETA; results in the order of ``jobs``.

    A job that fails raises RuntimeError with the end of its log once the running ones have finished.
    """
    pending, running, results = list(jobs), [], {}
    done_wall: list[float] = []
    last_report = time.perf_counter()
    failed = None
    while pending or running:
        while pending and len(running) < parallel and failed is None:
            job = pending.pop(0)
            job.start()
            running.append(job)
            logger.info("started %s (%d running, %d waiting)", job.name, len(running), len(pending))
        time.sleep(poll_s)
        for job in list(running):
            job.meter.sample()
            if job.proc.poll() is None:
                continue
            running.remove(job)
            results[job.name] = job.result()
            done_wall.append(results[job.name]["wall_s"])
            if job.proc.returncode != 0:
                failed = failed or job
                logger.error("%s failed (exit %s); log %s", job.name, job.proc.returncode, job.log)
                continue
            if job.on_done is not None:
                job.on_done(job, results[job.name])
            mean = sum(done_wall) / len(done_wall)
            eta = mean * (len(pending) + len(running) / 2) / max(1, parallel)
            res = results[job.name]
            logger.info("done %s in %.0f s (%.0f CPU-s); %d/%d jobs done, ETA %s", job.name, res["wall_s"],
                        res["cpu_s"], len(results), len(jobs), eta_text(eta))
        if failed is not None:
            pending.clear()
        if running and time.perf_counter() - last_report >= report_s:
            last_report = time.perf_counter()
            for job in running:
                if job.steps:
                    step, elapsed = job.step(), time.perf_counter() - job.started
                    eta = elapsed / step * (job.steps - step) if step else None
                    logger.info("%s: step %d/%d after %.0f s, ETA %s", job.name, step, job.steps, elapsed,
                                eta_text(eta))
    if failed is not None:
        tail = failed.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{failed.name} failed (exit {failed.proc.returncode}); end of {failed.log}:\n{tail}")
    return [results[job.name] for job in jobs]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def evaluate(request: dict[str, Any]) -> dict[str, Any]:
    """``pipeline.policy_eval.evaluate_policy`` on ``request`` (its keyword arguments), one torch thread; the report
    plus the process's wall and CPU seconds. Runs in a process pool (spawned: a fresh simulator and torch)."""
    import torch

    from pipeline.policy_eval import evaluate_policy

    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    report = evaluate_policy(**request, progress=False)
    report.pop("sim_config", None)
    return {**report, "wall_s": round(time.perf_counter() - wall, 1),
            "process_cpu_s": round(time.process_time() - cpu, 1)}
