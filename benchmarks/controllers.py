"""Search controllers compared on the DARTS PTB space with a synthetic lookup objective.

A hidden target cell is drawn from the space; the "validation loss" of a cell is
1 - (Weisfeiler-Lehman kernel similarity to the target) + small noise fixed per cell
(`nas.workers.lookup.SyntheticObjective`). Every controller runs 300 evaluations for
10 seeds through the real search loop (`nas.search.Search`, in-memory SQLite) with a
`LookupDispatcher` (4 trials in flight, finishing in random order); the table gives the
median and interquartile range of the best value found after 50 / 100 / 300 evaluations.

    python benchmarks/controllers.py                      # writes $OUT/controllers.{md,png,json}
    python benchmarks/controllers.py --driver direct      # bare ask/tell loop, no database
    nas bench controllers searchspaces/darts_ptb.cell     # the same through the CLI
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, out_dir, stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from nas.cli.bench_cmd import DEFAULT_CONTROLLERS, BenchConfig, markdown, run_benchmark, write_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(ROOT / "searchspaces" / "darts_ptb.cell"))
    ap.add_argument("--controllers", default=",".join(DEFAULT_CONTROLLERS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--evaluations", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--driver", default="search", choices=("search", "direct"))
    ap.add_argument("--target-seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    cfg = BenchConfig(space=args.space, controllers=tuple(args.controllers.split(",")), seeds=args.seeds,
                      evaluations=args.evaluations, workers=args.workers, driver=args.driver,
                      target_seed=args.target_seed, noise=args.noise,
                      checkpoints=tuple(p for p in (50, 100, 300) if p <= args.evaluations) or (args.evaluations,))
    n = len(cfg.controllers) * cfg.seeds
    done = [0]

    def progress(r):
        done[0] += 1
        print(f"[{done[0]}/{n}] {r['controller']} seed {r['seed']}: {r['seconds']:.1f} s", flush=True)

    result = run_benchmark(cfg, jobs=args.jobs, progress=progress)
    out = out_dir()
    files = write_outputs(result, out)
    text = markdown(result, title=f"Controllers on darts_ptb, synthetic objective ({stamp()})")
    text += (f"\nDevice: {device_name()}, {args.jobs} processes  \n"
             f"Command: `python benchmarks/controllers.py --seeds {args.seeds} --evaluations {args.evaluations} "
             f"--driver {args.driver}`\n")
    files["table"].write_text(text)
    print(text)
    print("wrote " + ", ".join(str(p) for p in files.values()))


if __name__ == "__main__":
    main()
