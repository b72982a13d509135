"""`RayDispatcher`: trials as Ray tasks with per-trial resources, retries and live reports.

Design (see docs/architecture.md, "Distributed dispatch"):

* One trial = one Ray task (`num_cpus`, fractional `num_gpus`, `memory`, `max_retries`).
  Ray places it, queues it while resources are busy, and retries it on another worker
  (or node) after a *system* failure: the worker process died, the node was removed, the
  task was killed by Ray's memory monitor. An exception inside the trial is not a system
  failure: `execute_trial` turns it into a `failed` result (no retry; rerunning the same
  cell with the same seed would fail the same way).
* GPU trials run in a fresh worker process each (`max_calls=1`, Ray's default for GPU
  tasks): Ray assigns GPUs through `CUDA_VISIBLE_DEVICES`, which a process reads once.
  Fractional `num_gpus` packs several trials on one GPU; each then gets the same share of
  the GPU memory (`torch.cuda.set_per_process_memory_fraction`), so one trial cannot
  starve the others: one that needs more fails with a CUDA out-of-memory error.
* Workers never touch the database. They talk to the driver through one small async
  actor (`_Channel`) pinned to the driver's node: `started` (host, GPU, pid, node,
  attempt) and `report` (an intermediate evaluation) messages. A report waits for the
  driver's answer (continue or prune), so the pruning decision of a multi-fidelity
  scheduler reaches the trial at the step it was taken for.
* The driver (`poll`) waits on the channel and the task references with `ray.wait`,
  turns messages into `Event`s for `nas.search`, and the task results (or the Ray errors
  that replace them) into `finished` events. `capacity` follows the cluster's resources
  (recomputed as nodes come and go), capped by `max_concurrent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import ray

from ..errors import UserError
from .dispatch import Dispatcher, Event, Handler
from .trial import TrialSpec, execute_trial

log = logging.getLogger(__name__)

#: How long a `take` call waits in the channel for messages before it returns empty.
_TAKE_WAIT_S = 5.0
#: How long `capacity` trusts its last look at the cluster's resources.
_RESOURCES_TTL_S = 1.0


# --------------------------------------------------------------------------- the channel


@ray.remote(num_cpus=0)
class _Channel:
    """Messages from running trials to the driver, and the driver's answers to reports."""

    def __init__(self) -> None:
        self._events: list[tuple] = []
        self._wake = asyncio.Event()
        self._waiting: dict[tuple[int, int], asyncio.Future] = {}
        self._attempts: dict[int, int] = {}
        self._stopped: set[int] = set()

    def _push(self, item: tuple) -> None:
        self._events.append(item)
        self._wake.set()

    async def started(self, trial_id: int, base_attempt: int, info: dict[str, Any]) -> int:
        """A worker begins (another attempt of) a trial; returns the attempt number."""
        attempt = self._attempts.get(trial_id, base_attempt - 1) + 1
        self._attempts[trial_id] = attempt
        self._push(("started", trial_id, attempt, info))
        return attempt

    async def report(self, trial_id: int, attempt: int, step: int, metrics: dict[str, float]) -> bool:
        """An intermediate evaluation; returns the driver's answer (False: stop the trial)."""
        if trial_id in self._stopped:
            return False
        fut = asyncio.get_running_loop().create_future()
        self._waiting[(trial_id, attempt)] = fut
        self._push(("report", trial_id, attempt, step, metrics))
        try:
            return bool(await fut)
        finally:
            if self._waiting.get((trial_id, attempt)) is fut:
                del self._waiting[(trial_id, attempt)]

    async def done(self, trial_id: int, attempt: int) -> None:
        """The attempt is about to return its result."""
        self._push(("done", trial_id, attempt))

    async def take(self, wait_s: float) -> list[tuple]:
        """All messages so far; waits up to `wait_s` for the first one (or a `flush`)."""
        if not self._events:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
        events, self._events = self._events, []
        return events

    async def flush(self) -> None:
        """Make a waiting `take` return now."""
        self._wake.set()

    async def decide(self, answers: list[tuple[int, int, bool]]) -> None:
        for trial_id, attempt, keep in answers:
            fut = self._waiting.get((trial_id, attempt))
            if fut is not None and not fut.done():
                fut.set_result(keep)

    async def stop(self, trial_ids: list[int]) -> None:
        """Answer 'stop' to every current and future report of these trials."""
        self._stopped.update(trial_ids)
        for (tid, _), fut in list(self._waiting.items()):
            if tid in self._stopped and not fut.done():
                fut.set_result(False)


# --------------------------------------------------------------------------- the worker side


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _host_memory_cap(limit: int | None):
    """Cap the growth of this process's address space at `limit` bytes for one trial.

    An allocation past it fails (torch: "can't allocate memory"), which the trial
    records as failed. Only used for CPU trials: CUDA reserves far more virtual memory
    than it uses, so an address-space cap cannot apply to GPU processes.
    """
    if not limit or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    vm = _vm_size_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if vm is None:
        yield
        return
    cap = vm + int(limit)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mem_text(n: float) -> str:
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}B"


def _noop_trial(spec: TrialSpec, report) -> Any:
    """What the dispatch benchmark runs: no training, one report, a completed result."""
    from ..tasks import TrialResult

    value = (spec.seed % 1000) / 1000.0
    metrics = {"val_loss": value}
    report(1, dict(metrics))
    return TrialResult(status="completed", metrics={**metrics, "steps": 1.0, "wall_time_s": 0.0},
                       curve=[(1, dict(metrics))])


def _trial_body(spec_dict: dict[str, Any], channel, opts: dict[str, Any]) -> dict[str, Any]:
    """Runs in a Ray worker: one attempt of one trial."""
    spec = TrialSpec(**spec_dict)
    gpus = float(opts.get("gpus") or 0.0)
    host = socket.gethostname()
    gpu = None
    device = "cpu"
    if gpus > 0 and not opts.get("noop"):
        import torch

        ids = [str(i) for i in ray.get_gpu_ids()]
        if torch.cuda.is_available():
            device = "cuda"
            gpu = f"{','.join(ids) or torch.cuda.current_device()}:{torch.cuda.get_device_name()}"
        else:
            gpu = ",".join(ids) or None
    info = {"host": host, "gpu": gpu, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}
    try:
        attempt = int(ray.get(channel.started.remote(spec.trial_id, spec.attempt, info)))
    except ray.exceptions.RayError:  # the driver is gone; Ray ends this job's tasks soon
        attempt = spec.attempt

    def report(step: int, metrics: dict[str, float]) -> bool:
        try:
            return bool(ray.get(channel.report.remote(spec.trial_id, attempt, int(step), dict(metrics))))
        except ray.exceptions.RayError:
            return False  # no driver to report to: stop

    if opts.get("cwd") and os.path.isdir(opts["cwd"]):
        os.chdir(opts["cwd"])  # relative data paths mean what they meant to the driver
    train = dict(spec.train)
    wanted = str(train.get("device") or "auto")
    train["device"] = device if (wanted == "auto" or wanted.startswith("cuda")) else wanted
    spec = replace(spec, train=train, attempt=attempt)

    if opts.get("noop"):
        result = _noop_trial(spec, report)
    else:
        import torch

        import nas.compile  # noqa: F401  (imported before any memory cap)
        import nas.tasks  # noqa: F401

        cpus = float(opts.get("cpus") or 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        if device == "cuda" and gpus < 1.0:
            torch.cuda.set_per_process_memory_fraction(max(0.01, min(1.0, gpus)))
        mem = opts.get("memory")
        with _host_memory_cap(mem if device == "cpu" else None):
            result = execute_trial(spec, report)
        if result.status == "failed" and result.error and _looks_oom(result.error):
            limit = (f"--memory-per-trial {_mem_text(mem)}" if mem and device == "cpu" else
                     f"{gpus:g} of the GPU's memory" if device == "cuda" and gpus < 1 else "the machine's memory")
            result.error = f"out of memory (limit: {limit})\n{result.error}"
    with contextlib.suppress(Exception):
        channel.done.remote(spec.trial_id, attempt)
    return {"result": result.to_dict(), "attempt": attempt, "host": host, "gpu": gpu}


def _looks_oom(text: str) -> bool:
    t = text.lower()
    return "out of memory" in t or "can't allocate memory" in t or "memoryerror" in t or \
        "cannot allocate memory" in t


_run_cpu_trial = ray.remote(_trial_body)
# A fresh process per GPU trial: CUDA_VISIBLE_DEVICES is read once per process.
_run_gpu_trial = ray.remote(max_calls=1)(_trial_body)


# --------------------------------------------------------------------------- the driver side


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) nobody listens on: say so now (Ray would retry
    for minutes)."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address!r}: expected host:port (what `ray start --head` prints), "
                        "ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                        "start one with `ray start --head` and pass the address it prints, "
                        "or leave out --ray-address to start a local Ray") from None



@dataclass
class _Flight:
    spec: TrialSpec
    attempt: int
    host: str | None = None
    gpu: str | None = None
    started: bool = False


class RayDispatcher(Dispatcher):
    """Runs trials as Ray tasks on a local Ray or on the cluster at `address`.

    Args:
        address: a running cluster (`ray start --head` prints it; "auto" finds a local
            one); None starts a local Ray with this machine's resources (`num_cpus`,
            `num_gpus` override what Ray detects). Ignored when Ray is already initialised
            in this process (tests, benchmarks): that Ray is used and left running.
        cpus_per_trial, gpus_per_trial, memory_per_trial: the Ray resources one trial
            asks for. `gpus_per_trial` may be a fraction (0.25: four trials share a GPU);
            None means 1 if the cluster has a GPU, else 0. `memory_per_trial` (bytes) is
            Ray's `memory` resource and, on CPU trials, a cap on the trial's allocations.
        max_concurrent: at most this many trials at once (default: what fits).
        max_retries: Ray retries of a trial after a system failure (worker or node died).
        noop: run no training (the dispatch-overhead benchmark).
    """

    def __init__(self, address: str | None = None, *, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float | None = None, memory_per_trial: int | None = None,
                 max_concurrent: int | None = None, max_retries: int = 2, num_cpus: int | None = None,
                 num_gpus: int | None = None, noop: bool = False, quiet: bool = True) -> None:
        if cpus_per_trial < 0 or not math.isfinite(cpus_per_trial):
            raise UserError(f"--cpus-per-trial must be >= 0, got {cpus_per_trial}")
        if gpus_per_trial is not None and (gpus_per_trial < 0 or not math.isfinite(gpus_per_trial)):
            raise UserError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
        if gpus_per_trial is not None and gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
            raise UserError(f"--gpus-per-trial {gpus_per_trial}: above 1 it must be a whole number",
                            "Ray gives a task either a fraction of one GPU or whole GPUs")
        if max_concurrent is not None and max_concurrent < 1:
            raise UserError(f"--max-concurrent must be >= 1, got {max_concurrent}")
        if max_retries < 0:
            raise UserError(f"--max-retries must be >= 0, got {max_retries}")
        if memory_per_trial is not None and memory_per_trial <= 0:
            raise UserError(f"--memory-per-trial must be > 0, got {memory_per_trial}")
        self._owns_ray = False
        if not ray.is_initialized():
            # no address: a new local Ray ("local"), never a Ray another process happens to run
            address = address or os.environ.get("RAY_ADDRESS") or None
            _check_reachable(address)
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                                      "logging_level": logging.WARNING}
            if address is None:
                kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
            try:
                ray.init(address=address or "local", **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot connect to the Ray cluster at {address!r}: {exc}",
                                "start one with `ray start --head` and pass the address it prints, "
                                "or leave out --ray-address to start a local Ray") from None
            self._owns_ray = True
        self.address = address
        self.cpus_per_trial = float(cpus_per_trial)
        self._resources_at = -math.inf
        self._resources: dict[str, float] = {}
        res = self._cluster_resources()
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if res.get("GPU", 0.0) >= 1.0 else 0.0
        self.gpus_per_trial = float(gpus_per_trial)
        self.memory_per_trial = int(memory_per_trial) if memory_per_trial else None
        self.max_concurrent = max_concurrent
        self.max_retries = int(max_retries)
        self.noop = noop
        self._check_fits(res)
        driver_node = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node, so losing a worker node never loses the channel
        self._channel = _Channel.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=driver_node, soft=False)).remote()
        self._flights: dict[ray.ObjectRef, _Flight] = {}
        self._by_trial: dict[int, ray.ObjectRef] = {}
        self._take: ray.ObjectRef | None = None
        self._opts = {"cpus": self.cpus_per_trial, "gpus": self.gpus_per_trial, "memory": self.memory_per_trial,
                      "noop": noop, "cwd": os.getcwd()}
        self._closed = False

    # -- resources ---------------------------------------------------------------------------
    def _cluster_resources(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._resources_at > _RESOURCES_TTL_S:
            self._resources = dict(ray.cluster_resources())
            self._resources_at = now
        return self._resources

    def _fits(self, res: dict[str, float]) -> int:
        k = math.inf
        for need, have in ((self.cpus_per_trial, res.get("CPU", 0.0)), (self.gpus_per_trial, res.get("GPU", 0.0)),
                           (self.memory_per_trial or 0, res.get("memory", 0.0))):
            if need > 0:
                k = min(k, math.floor(have / need + 1e-9))
        if self.max_concurrent is not None:
            k = min(k, self.max_concurrent)
        if k == math.inf:  # a trial that asks for nothing: one per CPU
            k = max(1, int(res.get("CPU", 1)))
        return int(k)

    def _check_fits(self, res: dict[str, float]) -> None:
        if self._fits(res) >= 1:
            return
        have = (f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
                f"{_mem_text(res.get('memory', 0))} memory")
        want = (f"{self.cpus_per_trial:g} CPUs, {self.gpus_per_trial:g} GPUs"
                + (f", {_mem_text(self.memory_per_trial)} memory" if self.memory_per_trial else ""))
        hint = ("pass --gpus-per-trial 0 to train on CPUs" if self.gpus_per_trial > res.get("GPU", 0.0)
                else "ask for less per trial, or join a larger cluster with --ray-address")
        raise UserError(f"no trial fits on this Ray cluster: it has {have}; a trial asks for {want}", hint)

    def describe(self) -> str:
        res = self._cluster_resources()
        where = f"Ray cluster {self.address}" if self.address else "local Ray"
        per = f"{self.cpus_per_trial:g} CPU" + (f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else "")
        if self.memory_per_trial:
            per += f" + {_mem_text(self.memory_per_trial)}"
        return (f"{where} ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs); {per} per trial, "
                f"{self.capacity} at once, {self.max_retries} retries")

    @property
    def capacity(self) -> int:
        return self._fits(self._cluster_resources())

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    @property
    def ends_tasks_on_shutdown(self) -> bool:
        """True on a Ray connection of this dispatcher's own: `shutdown` disconnects it,
        and Ray then ends every task the job started and kills their workers at once."""
        return self._owns_ray

    # -- submitting ----------------------------------------------------------------------------
    def submit(self, spec: TrialSpec) -> None:
        fn = _run_gpu_trial if (self.gpus_per_trial > 0 and not self.noop) else _run_cpu_trial
        options: dict[str, Any] = {"num_cpus": self.cpus_per_trial, "num_gpus": self.gpus_per_trial,
                                   "max_retries": self.max_retries, "retry_exceptions": False,
                                   "name": f"nas-trial-{spec.trial_id}"}
        if self.memory_per_trial:
            options["memory"] = self.memory_per_trial
        ref = fn.options(**options).remote(spec.to_dict(), self._channel, self._opts)
        self._flights[ref] = _Flight(spec, spec.attempt)
        self._by_trial[spec.trial_id] = ref

    # -- events --------------------------------------------------------------------------------
    def _deliver(self, messages: list[tuple], handle: Handler) -> None:
        answers: list[tuple[int, int, bool]] = []
        for msg in messages:
            kind, trial_id, attempt = msg[0], msg[1], msg[2]
            ref = self._by_trial.get(trial_id)
            flight = self._flights.get(ref) if ref is not None else None
            if kind == "started":
                info = msg[3]
                if flight is None:
                    # the attempt's result was already handled (the sweep below can see a fast
                    # trial end before its "started" message arrives) or it was cancelled:
                    # starting it now would mark a finished trial running and clear its result
                    continue
                flight.attempt, flight.host, flight.gpu, flight.started = attempt, info["host"], info["gpu"], True
                handle(Event("started", trial_id, host=info["host"], gpu=info["gpu"], attempt=attempt,
                             pid=info.get("pid"), node=info.get("node")))
            elif kind == "report":
                step, metrics = msg[3], msg[4]
                if flight is None or attempt != flight.attempt:
                    answers.append((trial_id, attempt, False))  # a stale attempt
                    continue
                keep = handle(Event("report", trial_id, step=step, metrics=dict(metrics), host=flight.host,
                                    gpu=flight.gpu, attempt=attempt))
                answers.append((trial_id, attempt, keep is not False))
        if answers:
            self._channel.decide.remote(answers)

    def _result_of(self, ref: ray.ObjectRef, flight: _Flight):
        from ..tasks import TrialResult

        try:
            out = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return None
        except ray.exceptions.RayError as exc:
            kind = type(exc).__name__
            text = str(exc).strip().splitlines()
            first = next((ln for ln in text if ln.strip()), "")
            attempts = flight.attempt if flight.started else 0
            why = {"WorkerCrashedError": "the worker process died", "NodeDiedError": "its node died",
                   "OutOfMemoryError": "Ray's memory monitor killed it (the node ran out of memory)",
                   "ObjectLostError": "its result was lost with its node"}.get(kind, "Ray could not run it")
            error = (f"{kind}: {why}; gave up after attempt {attempts} "
                     f"(--max-retries {self.max_retries})\n{first}\n" + "\n".join(text[1:20]))
            return TrialResult(status="failed", error=error.strip())
        flight.attempt = out.get("attempt", flight.attempt)
        flight.host = out.get("host") or flight.host
        flight.gpu = out.get("gpu") or flight.gpu
        return TrialResult.from_dict(out["result"])

    def poll(self, handle: Handler, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._take is None:
                self._take = self._channel.take.remote(_TAKE_WAIT_S)
            refs = list(self._flights)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([self._take, *refs], num_returns=1, timeout=left, fetch_local=False)
            if not ready:
                return
            done = [r for r in ready if r is not self._take]
            if done and self._take not in ready:
                self._channel.flush.remote()  # messages sent before these tasks ended come first
            messages = ray.get(self._take)
            self._take = None
            self._deliver(messages, handle)
            # A blocking ray.wait on [channel call, task refs] was seen (Ray 2.60) to miss a task
            # that had finished until the channel call returned, so workers also say "done"
            # through the channel, and every round sweeps the task refs without blocking.
            said_done = [self._by_trial[m[1]] for m in messages if m[0] == "done" and m[1] in self._by_trial]
            if refs:
                swept, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
                done.extend(swept)
            for ref in said_done:
                if ref not in done and ray.wait([ref], timeout=2.0, fetch_local=False)[0]:
                    done.append(ref)
            done = list(dict.fromkeys(done))
            for ref in done:
                flight = self._flights[ref]
                result = self._result_of(ref, flight)
                del self._flights[ref]
                if self._by_trial.get(flight.spec.trial_id) is ref:
                    del self._by_trial[flight.spec.trial_id]
                if result is None:  # cancelled
                    continue
                if not flight.started and flight.host is not None:  # it ended before its "started" arrived
                    handle(Event("started", flight.spec.trial_id, host=flight.host, gpu=flight.gpu,
                                 attempt=flight.attempt))
                handle(Event("finished", flight.spec.trial_id, result=result, host=flight.host, gpu=flight.gpu,
                             attempt=flight.attempt))
            if done or (deadline is not None and time.monotonic() >= deadline):
                return

    # -- stopping ------------------------------------------------------------------------------
    def cancel_all(self) -> list[int]:
        """Stop the trials in flight; return their ids.

        On a Ray connection of its own the dispatcher does not cancel: it shuts down, and
        Ray ends the disconnected job's tasks and kills their workers at once. In Ray 2.60
        a `ray.cancel` that races with a task just finishing aborts the driver (RAY_CHECK
        "Tried to complete task that was not pending", seen in CI on Ctrl-C), and with it
        the cleanup and the resume hint. On a Ray someone else started, disconnecting is
        not ours to do: the unfinished tasks are force-cancelled.
        """
        ids = [f.spec.trial_id for f in self._flights.values()]
        refs = list(self._flights)
        self._flights.clear()
        self._by_trial.clear()
        if self.ends_tasks_on_shutdown:
            self.shutdown()
            return ids
        if refs:
            finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            for ref in set(refs) - set(finished):  # a finished task's cancel is the race's window
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):  # what a cancel missed stops at its next report
                self._channel.stop.remote(ids)
        return ids

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flights:
            self.cancel_all()
        with contextlib.suppress(Exception):
            ray.kill(self._channel)
        if self._owns_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
