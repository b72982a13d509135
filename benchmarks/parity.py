"""Parity as a benchmark of state tracking: trained on lengths <= L, tested at L and 2L.

An LSTM learns it and holds it at 2L; a minGRU (diagonal recurrence with gates in (0, 1))
does not - the known limit of positive-eigenvalue diagonal recurrences.

    python benchmarks/parity.py --length 20 --steps 3000 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CELLS = {
    "lstm (DSL)": ("lstm.cell", {}),
    "gru (DSL)": ("gru.cell", {}),
    "minGRU (DSL, gate in (0,1))": ("mingru.cell", {"z.op": 0, "ht.cand_act": 0, "model.layers": 0}),
}


def run_one(job: tuple[str, int, dict]) -> dict:
    import torch

    from nas.compile import build_rnn
    from nas.config import ModelConfig, TaskSpec, TrainConfig
    from nas.space import load_space
    from nas.tasks import make_task, train_trial

    name, seed, a = job
    file, assignment = CELLS[name]
    space = load_space(ROOT / "searchspaces" / file)
    graph = space.instantiate({**space.normalize({}), **assignment})
    torch.set_num_threads(1)
    task = make_task(TaskSpec(name="parity", kwargs={"length": a["length"]}))
    r = train_trial(task, lambda i, h, n, d: build_rnn(graph, i, h, n, d, batch_first=True),
                    ModelConfig(embed=16, hidden=a["hidden"], layers=1),
                    TrainConfig(steps=a["steps"], batch_size=128, lr=a["lr"], eval_every=500),
                    seed=seed, device=a["device"])
    return {"cell": name, "seed": seed, "status": r.status, **{k: r.metrics.get(k) for k in
            ("val_acc", "acc_2x", "acc_4x", "val_loss", "wall_time_s")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=9)
    args = ap.parse_args()
    jobs = [(name, seed, vars(args)) for name in CELLS for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_one, jobs))
    for r in rows:
        print(r, flush=True)
    L = args.length
    table = md_table(["cell", "seed", "status", f"acc at L={L}", f"acc at 2L={2 * L}", f"acc at 4L={4 * L}", "wall s"],
                     [[r["cell"], r["seed"], r["status"], r["val_acc"], r["acc_2x"], r["acc_4x"], r["wall_time_s"]]
                      for r in rows])
    text = (f"### Parity, trained on lengths 1..{L} ({stamp()})\n\nDevice: {device_name()}  \n"
            f"Command: `python benchmarks/parity.py --length {L} --steps {args.steps} --seeds {args.seeds}` "
            f"(hidden {args.hidden}, batch 128, Adam lr {args.lr}; accuracy on 1024 fresh sequences per length)\n\n"
            + table + "\n")
    print(text)
    out = out_dir()
    write_json(out / "parity.json", rows)
    (out / "parity.md").write_text(text)


if __name__ == "__main__":
    main()
