"""DARTS on Tiny Shakespeare characters, then the derived cell against known cells, in one run.

    python benchmarks/darts_search.py                        # GPU: a few minutes on one H200
    python benchmarks/darts_search.py --ptb /data/ptb        # the same on PTB words (word_lm)
    python benchmarks/darts_search.py --smoke                # CPU check at toy sizes (~1 min)

1. A DARTS search over `searchspaces/darts_ptb.cell` (the job `nas search run ... -c darts`
   runs: `nas.workers.darts_job`), scaled to minutes: `--hidden` (embed = hidden),
   `--search-steps` bilevel steps of batch `--batch` x BPTT `--bptt`, order `--order`.
   alpha: DARTS's Adam (lr 3e-3, betas (0.9, 0.999), wd 1e-3, init 1e-3 randn); weights:
   `--w-optimizer space` (Adam lr `--lr`, clip 0.25, the retraining recipe; default) or
   `sgd` (DARTS: SGD lr 20, wd 5e-7, clip 0.25).
2. The derived cell, the published DARTS V2 cell, torch.nn.LSTM (cuDNN) and 5 random cells
   of the space, each trained from scratch with the same short recipe (`--train-steps`,
   Adam `--lr`, same seed, backend `auto`: the Triton kernels where they apply).

Prints a markdown table of validation losses plus the search's GPU time, and writes
`darts_search.json` (and the alpha plot) under $OUT (or ./out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.compile import build_rnn  # noqa: E402
from nas.config import ModelConfig, TaskSpec, TrainConfig  # noqa: E402
from nas.controllers import make_controller  # noqa: E402
from nas.genotypes import DARTS_V2, darts_assignment  # noqa: E402
from nas.space import load_space  # noqa: E402
from nas.supernet_phase import plot_alpha  # noqa: E402
from nas.tasks import make_task, train_trial  # noqa: E402
from nas.workers.darts_job import run_darts_job  # noqa: E402

SPACE = ROOT / "searchspaces" / "darts_ptb.cell"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"),
                    help="text file (char_lm) or PTB-layout folder (word_lm)")
    ap.add_argument("--task", choices=("char_lm", "word_lm"), default="char_lm")
    ap.add_argument("--ptb", default=None, help="PTB folder: same as --task word_lm --data DIR")
    ap.add_argument("--hidden", type=int, default=256, help="embed = hidden, search and retraining")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--search-steps", type=int, default=300)
    ap.add_argument("--order", type=int, choices=(1, 2), default=1)
    ap.add_argument("--w-optimizer", choices=("space", "sgd"), default="space")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--random", type=int, default=5, help="random cells of the space to train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto", help="backend of the retrained DSL cells")
    ap.add_argument("--smoke", action="store_true", help="toy sizes and a 30k-character corpus, CPU")
    a = ap.parse_args()
    if a.ptb:
        a.task, a.data = "word_lm", a.ptb
    if a.smoke:
        a.hidden, a.batch, a.bptt, a.search_steps, a.train_steps, a.random = 8, 4, 8, 4, 3, 2
        if a.task == "char_lm":
            text = Path(a.data).read_text()[:30_000]
            small = Path(tempfile.mkdtemp(prefix="darts-smoke-")) / "input.txt"
            small.write_text(text)
            a.data = str(small)
    return a


def _out_dir() -> Path:
    out = Path(os.environ.get("OUT") or "out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def main() -> None:
    a = _args()
    space = load_space(SPACE)
    task_spec = TaskSpec(name=a.task, args=(a.data,))
    task = make_task(task_spec)
    model = ModelConfig(embed=a.hidden, hidden=a.hidden, layers=1, dropout_embed=0.1, dropout_out=0.1)
    train = TrainConfig(steps=a.train_steps, batch_size=a.batch, seq_len=a.bptt, lr=a.lr, optimizer="adam",
                        clip=0.25, eval_every=max(1, a.train_steps // 4), eval_batches=10, device=a.device,
                        backend=a.backend)
    # ---- 1. the search ----------------------------------------------------------------------------
    ctl = make_controller("darts", space, seed=a.seed, steps=a.search_steps, order=a.order,
                          w_optimizer=a.w_optimizer, log_every=max(1, a.search_steps // 50),
                          checkpoint_every=10 ** 9)
    spec = {"space_text": space.text, "space_file": str(SPACE), "options": dict(ctl.options),
            "model": model.model_dump(), "train": train.model_dump(), "task": task_spec.model_dump(),
            "seed": a.seed, "device": a.device}
    history, done = [], None
    t0 = time.time()
    for ev in run_darts_job(spec):
        if ev["kind"] == "history":
            history.append((ev["step"], ev["metrics"]))
            m = ev["metrics"]
            print(f"search step {ev['step']}/{ev['total']}: train {m['train_loss']:.4f} "
                  f"alpha-val {m.get('alpha_val_loss', float('nan')):.4f}", flush=True)
        elif ev["kind"] == "done":
            done = ev
    assert done is not None
    derived = ctl.finish(done["probs"])
    search_s = done["metrics"]["search_time_s"]
    genotype = [(space.describe(derived)[f"n{i}.act"], derived.get(f"p_{i}.in", 0)) for i in range(1, 9)]
    print(f"search: {a.search_steps} steps in {search_s:.1f} s on {_device_name(a.device)} "
          f"(wall {time.time() - t0:.1f} s); derived genotype {genotype}", flush=True)
    out = _out_dir()
    plot = plot_alpha(history, out / "darts_alpha.png")
    (out / "darts_derived.cell").write_text(space.to_dsl(derived, name="darts_ptb_derived"))

    # ---- 2. retrain the cells ----------------------------------------------------------------------
    rng = random.Random(a.seed)
    cells = {"derived (this search)": derived, "DARTS V2 (published)": darts_assignment(space, DARTS_V2)}
    for k in range(a.random):
        cells[f"random {k + 1}"] = space.sample(rng)
    results = {}
    runs = [(name, space.instantiate(asg)) for name, asg in cells.items()]
    runs.insert(2, ("LSTM (torch.nn.LSTM)", None))
    for name, graph in runs:
        if graph is None:
            def factory(i, h, n, d):
                return torch.nn.LSTM(i, h, n, dropout=d, batch_first=True)
        else:
            def factory(i, h, n, d, graph=graph):
                return build_rnn(graph, i, h, n, d, batch_first=True, backend=a.backend)
        t1 = time.time()
        r = train_trial(task, factory, model, train, seed=a.seed, device=a.device)
        results[name] = {"status": r.status, "val_loss": r.metrics.get("val_loss"), "metrics": r.metrics,
                         "wall_s": time.time() - t1, "hash": graph.short_hash if graph is not None else None,
                         "error": (r.error or "").strip().splitlines()[-1:] if r.error else None}
        print(f"{name}: {r.status} val_loss {r.metrics.get('val_loss')} in {time.time() - t1:.1f} s", flush=True)

    # ---- report -------------------------------------------------------------------------------------
    unit = "bpc" if a.task == "char_lm" else "ppl"
    conv = (lambda v: v / 0.6931471805599453) if unit == "bpc" else (lambda v: float(torch.tensor(v).exp()))
    rows = ["| cell | val loss (nats) | val " + unit + " | params | train tok/s | wall s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        v = r["val_loss"]
        m = r["metrics"]
        rows.append(f"| {name} | {v:.4f} | {conv(v):.3f} | {int(m.get('params', 0)):,} | "
                    f"{m.get('tokens_per_s', 0):,.0f} | {r['wall_s']:.1f} |" if v is not None else
                    f"| {name} | {r['status']} | - | - | - | {r['wall_s']:.1f} |")
    head = (f"DARTS search on {a.task} `{Path(a.data).name}`, {_device_name(a.device)}: darts_ptb space, embed = hidden "
            f"= {a.hidden}, batch {a.batch} x BPTT {a.bptt}, {a.search_steps} bilevel steps (order {a.order}, "
            f"weights {a.w_optimizer}), search GPU time {search_s:.1f} s; supernet val loss "
            f"{done['metrics']['supernet_val_loss']:.4f}. Retraining: {a.train_steps} steps, Adam lr {a.lr}, "
            f"clip 0.25, dropout 0.1, seed {a.seed}, backend {a.backend}.")
    print()
    print(head)
    print()
    print("\n".join(rows))
    print(f"\nderived genotype (f, j) for nodes 1..8: {genotype}")
    payload = {"args": vars(a), "device": _device_name(a.device), "search_time_s": search_s,
               "supernet": done["metrics"], "derived": derived, "genotype": genotype, "probs": done["probs"],
               "history": history, "results": results, "table": rows, "summary": head, "alpha_plot": plot}
    (out / "darts_search.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out / 'darts_search.json'}")


if __name__ == "__main__":
    main()
