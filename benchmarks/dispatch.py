"""Dispatch overhead per trial: what the search driver + Ray cost when trials do ~nothing.

Runs real searches (controller, SQLite database, every state change recorded) whose
trials are trivial, and reports wall time / trials:

* `noop`: the worker trains nothing (RayDispatcher(noop=True)): started, one
  intermediate report answered by the driver, a completed result - the whole dispatch
  path and nothing else;
* `1 step`: a real trial of one optimizer step on a tiny parity model (hidden 8);
* `local, 1 step`: the same trials in-process without Ray (LocalDispatcher), for scale;
* `Ray Tune`: for comparison, a bare `ray.tune.Tuner` running the same number of
  trivial function trials (no database, no controller) - what the design would cost
  if Tune's own loop ran the trials.

Each Ray mode runs once to warm up (worker processes start and import torch), then is
timed. With `concurrency 1` the number is the latency of one trial end to end.

    python benchmarks/dispatch.py --trials 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = """\
space dispatch_bench
state h
choice act = {tanh, relu, sigmoid, identity}
cell {
  z = sigmoid(linear(x, h))
  h' = (1 - z) * h + z * act(linear(x, h))
}
model { embed = 4; hidden = 8 }
train { task = parity(length=4); steps = 1; batch_size = 8; eval_every = 1; eval_batches = 1
        lr = log_uniform(1e-4, 1e-1) }
"""


def run_search(store, space_file: Path, name: str, trials: int, dispatcher) -> float:
    from nas.search import Search, SearchOptions

    search = Search.create(store, space_file, SearchOptions(trials=trials, seed=0), name=name)
    t0 = time.perf_counter()
    progress = search.run(dispatcher=dispatcher)
    wall = time.perf_counter() - t0
    assert progress.done == trials, progress
    c = store.counts(name)
    assert c["completed"] == trials, c
    return wall


def tune_baseline(trials: int, concurrency: int) -> float:
    from ray import tune

    def trainable(config):
        tune.report({"val_loss": config["x"]})

    tmp = tempfile.mkdtemp(prefix="tune-bench-")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(num_samples=trials, metric="val_loss", mode="min",
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(storage_path=tmp, verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    assert len(results) == trials
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200, help="trials per timed search")
    ap.add_argument("--tune-trials", type=int, default=40, help="trials of the Ray Tune comparison (0: skip)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    args = ap.parse_args()

    import ray

    from nas.storage import Store
    from nas.workers import LocalDispatcher, RayDispatcher

    out = out_dir()
    tmp = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    space_file = tmp / "bench.cell"
    space_file.write_text(SPACE)
    store = Store.open(tmp / "bench.db")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows, raw = [], []
    n = args.trials
    k = 0

    def timed(label: str, make, concurrency: int, trials: int = n, warm: bool = True) -> None:
        nonlocal k
        if warm:
            k += 1
            run_search(store, space_file, f"warm{k}", max(2 * concurrency, 4), make())
        k += 1
        wall = run_search(store, space_file, f"run{k}", trials, make())
        rows.append([label, concurrency, trials, round(wall, 2), round(wall / trials, 4), round(trials / wall * 3600)])
        raw.append({"mode": label, "concurrency": concurrency, "trials": trials, "wall_s": wall})
        print(f"  {label:<34} concurrency {concurrency}: {wall:7.2f} s, {wall / trials * 1000:7.1f} ms/trial",
              flush=True)

    print(f"local Ray with {args.cpus} CPUs started in {init_s:.1f} s; {n} trials per search", flush=True)
    timed("noop (Ray)", lambda: RayDispatcher(noop=True), args.cpus)
    timed("noop (Ray)", lambda: RayDispatcher(noop=True, max_concurrent=1), 1)
    timed("1 step (Ray)", lambda: RayDispatcher(), args.cpus)
    timed("1 step (Ray)", lambda: RayDispatcher(max_concurrent=1), 1)
    timed("1 step (local, no Ray)", LocalDispatcher, 1, trials=max(20, n // 4), warm=False)
    if args.tune_trials:
        tune_baseline(min(8, args.tune_trials), args.cpus)  # warm-up
        wall = tune_baseline(args.tune_trials, args.cpus)
        rows.append(["Ray Tune Tuner, trivial trials (no DB)", args.cpus, args.tune_trials, round(wall, 2),
                     round(wall / args.tune_trials, 4), round(args.tune_trials / wall * 3600)])
        raw.append({"mode": "tune", "concurrency": args.cpus, "trials": args.tune_trials, "wall_s": wall})
        print(f"  Ray Tune: {wall:.2f} s, {wall / args.tune_trials * 1000:.1f} ms/trial", flush=True)
    ray.shutdown()

    table = md_table(["mode", "concurrency", "trials", "wall s", "s / trial", "trials / h"], rows)
    head = (f"### Dispatch overhead ({stamp()})\n\nDevice: {device_name()}, local Ray with {args.cpus} CPUs "
            f"(started in {init_s:.1f} s, not counted); SQLite database  \n"
            f"Command: `python benchmarks/dispatch.py --trials {n} --tune-trials {args.tune_trials}`\n")
    md = head + "\n" + table + "\n"
    (out / "dispatch.md").write_text(md)
    write_json(out / "dispatch.json", {"cpus": args.cpus, "init_s": init_s, "runs": raw, "device": device_name()})
    print()
    print(md)


if __name__ == "__main__":
    main()
