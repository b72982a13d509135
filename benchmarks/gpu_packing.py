"""Search throughput on GPUs through Ray: trials packed per GPU (fractional GPUs), and
the same search on 2 GPUs vs 1.

Every configuration runs the same search (same seed, same trials): a short Tiny
Shakespeare character-LM proxy - a gated cell (2 projections, activation and learning
rate searched, so every trial costs the same), embed 64, hidden 128, BPTT 64, batch 32,
`--steps` steps, the `reference` backend - dispatched by `RayDispatcher` with
`--gpus-per-trial 1/p` for p trials per GPU, each trial in a fresh worker process (Ray's
rule for GPU tasks). It prints trials/hour per configuration and the ratios measured in
this run: vs 1 trial per GPU, and vs 1 GPU.

    # one GPU: 1, 2 and 4 trials packed on it
    python benchmarks/gpu_packing.py --gpus 1 --pack 1,2,4
    # two GPUs vs one, 2 trials per GPU
    python benchmarks/gpu_packing.py --gpus 1,2 --pack 2 --trials 24

A configuration that would overrun its share of `--max-seconds` is stopped (the search's
time budget) and its rate is taken over the trials it finished (marked "cut").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FALLBACK_DATA = ROOT / ".bench_data" / "input.txt"

SPACE = """\
space shakespeare_proxy
state h
choice act = {{tanh, relu, sigmoid, identity}}
cell {{
  z = sigmoid(linear(x, h))
  cand = act(linear(x, h))
  h' = blend(z, h, cand)
}}
model {{ embed = 64; hidden = 128 }}
train {{ task = char_lm("{data}"); steps = {steps}; batch_size = 32; seq_len = 64; eval_every = 50
        eval_batches = 5; lr = log_uniform(1e-3, 1e-2, n=8) }}
"""


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help=f"Tiny Shakespeare input.txt (default {DEFAULT_DATA}, "
                    f"else {FALLBACK_DATA})")
    ap.add_argument("--gpus", default="1", help="comma list of GPU counts to compare, e.g. 1,2")
    ap.add_argument("--pack", default="1,2,4", help="comma list of trials per GPU")
    ap.add_argument("--trials", type=int, default=12, help="trials of every search")
    ap.add_argument("--steps", type=int, default=150, help="training steps per trial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=450.0, help="stop configurations past this (total)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: logical Ray GPUs, trials train on the CPU "
                    "(checks the script, not the numbers)")
    args = ap.parse_args()
    t_start = time.time()

    data = Path(args.data) if args.data else (DEFAULT_DATA if DEFAULT_DATA.exists() else FALLBACK_DATA)
    if not data.exists():
        sys.exit(f"no Tiny Shakespeare at {data}; pass --data")
    import ray
    import torch

    from nas.search import Search, SearchOptions
    from nas.storage import Store
    from nas.workers import RayDispatcher

    n_dev = torch.cuda.device_count()
    gpus_list, packs = ints(args.gpus), ints(args.pack)
    if args.dry_run:
        n_dev = max(gpus_list)
    elif not n_dev:
        sys.exit("no CUDA GPU visible")
    if max(gpus_list) > n_dev:
        sys.exit(f"--gpus {args.gpus}: only {n_dev} GPU(s) visible")
    out = out_dir()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-packing-"))
    space_file = tmp / "proxy.cell"
    space_file.write_text(SPACE.format(data=str(data.resolve()), steps=args.steps))
    store = Store.open(tmp / "bench.db")
    configs = [(g, p) for g in gpus_list for p in packs]
    weights = {c: 1.0 / (c[0] * c[1]) for c in configs}
    deadline = t_start + args.max_seconds
    rows, raw = [], []
    rate: dict[tuple[int, int], float] = {}
    print(f"{device_name()}: {n_dev} GPU(s) visible, {os.cpu_count()} CPUs; {args.trials} trials x "
          f"{args.steps} steps per search; data {data}", flush=True)

    for gi, g in enumerate(gpus_list):
        t0 = time.time()
        ray.init(address="local", num_gpus=g, include_dashboard=False, log_to_driver=False)
        init_s = time.time() - t0
        print(f"Ray with {g} GPU(s) up in {init_s:.1f} s: {ray.cluster_resources()}", flush=True)
        for p in packs:
            left = [c for c in configs if configs.index(c) >= configs.index((g, p))]
            share = (deadline - time.time()) * weights[(g, p)] / sum(weights[c] for c in left)
            name = f"g{g}-p{p}"
            peak = {"now": 0, "max": 0}

            class Counting(RayDispatcher):
                def poll(self, handle, timeout=None):
                    def h(ev):
                        if ev.kind == "started" and ev.attempt == 1:
                            peak["now"] += 1
                            peak["max"] = max(peak["max"], peak["now"])
                        elif ev.kind == "finished":
                            peak["now"] -= 1
                        return handle(ev)

                    return super().poll(h, timeout)

            search = Search.create(store, space_file, SearchOptions(trials=args.trials, seed=args.seed), name=name)
            d = Counting(gpus_per_trial=1.0 / p, cpus_per_trial=1.0, max_retries=0)
            t0 = time.time()
            prog = search.run(dispatcher=d, time_budget=max(30.0, share))
            wall = time.time() - t0
            trials = store.trials(name)
            done = [t for t in trials if t.status == "completed"]
            bad = [t for t in trials if t.status in ("failed", "diverged")]
            for t in bad[:2]:
                print(f"  trial {t.trial_index} {t.status}: {(t.error or '').strip()[-600:]}", flush=True)
            r = len(done) / wall * 3600.0 if done else 0.0
            rate[(g, p)] = r
            trial_s = statistics.mean(t.wall_time_s for t in done if t.wall_time_s) if done else float("nan")
            tok = statistics.mean(t.metrics.get("tokens_per_s", 0.0) for t in done) if done else float("nan")
            gpus_seen = sorted({(t.gpu or "?").split(":")[0] for t in done})
            base_p = rate.get((g, packs[0]))
            base_g = rate.get((gpus_list[0], p))
            rows.append([g, p, f"{1.0 / p:g}", f"{len(done)}/{args.trials}" + (" (cut)" if prog.stopped else ""),
                         round(wall, 1), round(r), peak["max"], round(trial_s, 2), round(tok),
                         ",".join(gpus_seen), f"{r / base_p:.2f}x" if base_p else "-",
                         f"{r / base_g:.2f}x" if base_g and gi else "-"])
            raw.append({"gpus": g, "pack": p, "completed": len(done), "failed": len(bad), "wall_s": wall,
                        "trials_per_h": r, "peak_concurrent": peak["max"], "mean_trial_s": trial_s,
                        "mean_tokens_per_s": tok, "stopped": prog.stopped, "gpu_ids": gpus_seen})
            print(f"  {g} GPU(s), {p}/GPU: {len(done)} trials in {wall:.1f} s = {r:.0f} trials/h "
                  f"(peak {peak['max']} at once, {trial_s:.1f} s per trial)", flush=True)
        ray.shutdown()

    headers = ["GPUs", "trials/GPU", "gpus_per_trial", "completed", "wall s", "trials/h", "peak running",
               "s/trial", "train tok/s per trial", "GPU ids", f"vs {packs[0]}/GPU", f"vs {gpus_list[0]} GPU"]
    table = md_table(headers, rows)
    md = (f"### Search throughput on GPUs ({stamp()})\n\nDevice: {device_name()}, {n_dev} visible  \n"
          f"Command: `python benchmarks/gpu_packing.py --gpus {args.gpus} --pack {args.pack} --trials {args.trials} "
          f"--steps {args.steps}` (char LM proxy on Tiny Shakespeare: gated cell, embed 64, hidden 128, BPTT 64, "
          f"batch 32, reference backend; one fresh worker process per trial)\n\n{table}\n")
    (out / "gpu_packing.md").write_text(md)
    write_json(out / "gpu_packing.json", {"args": vars(args), "device": device_name(), "runs": raw})
    print()
    print(md)
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
