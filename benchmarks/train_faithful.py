"""Faithful training: the DSL LSTM (reference backend) and torch.nn.LSTM (cuDNN), trained
with the same recipe and seed on Tiny Shakespeare characters, in the same run.

    python benchmarks/train_faithful.py --data ../shared/data/tinyshakespeare/input.txt --steps 600

Prints both validation curves and a table; writes them as JSON under $OUT (or ./out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import device_name, md_table, out_dir, stamp, write_json  # noqa: E402

from nas.compile import build_rnn  # noqa: E402
from nas.config import ModelConfig, TaskSpec, TrainConfig  # noqa: E402
from nas.space import load_space  # noqa: E402
from nas.tasks import make_task, train_trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt", help="a text file (char LM)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    task = make_task(TaskSpec(name="char_lm", args=(args.data,)))
    model = ModelConfig(embed=args.hidden, hidden=args.hidden, layers=args.layers)
    train = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.bptt, lr=args.lr, optimizer="adam",
                        clip=1.0, eval_every=max(1, args.steps // 10), eval_batches=20)
    graph = load_space(Path(__file__).resolve().parents[1] / "searchspaces" / "lstm.cell").instantiate({})
    factories = {
        "torch.nn.LSTM (cuDNN)": lambda i, h, n, d: torch.nn.LSTM(i, h, n, dropout=d, batch_first=True),
        "DSL lstm.cell (reference)": lambda i, h, n, d: build_rnn(graph, i, h, n, d, batch_first=True),
    }
    results = {}
    for name, factory in factories.items():
        t0 = time.time()
        r = train_trial(task, factory, model, train, seed=args.seed, device=args.device)
        results[name] = {"status": r.status, "metrics": r.metrics, "curve": r.curve, "wall_s": time.time() - t0,
                         "error": r.error}
        print(f"{name}: {r.status} val_loss {r.metrics.get('val_loss')} in {time.time() - t0:.1f} s", flush=True)
    names = list(results)
    a, b = (results[n]["metrics"].get("val_loss", float("nan")) for n in names)
    steps = [s for s, _ in results[names[0]]["curve"]]
    curve_rows = [[s] + [dict(results[n]["curve"]).get(s, {}).get("val_loss", float("nan")) for n in names]
                  for s in steps]
    table = md_table(["model", "final val loss (nats/char)", "val bpc", "params", "train tokens/s", "wall s"],
                     [[n, results[n]["metrics"].get("val_loss"), results[n]["metrics"].get("val_bpc"),
                       int(results[n]["metrics"].get("params", 0)), results[n]["metrics"].get("tokens_per_s"),
                       results[n]["wall_s"]] for n in names])
    rel = abs(a - b) / min(a, b)
    header = (f"### Faithful training: DSL LSTM vs torch.nn.LSTM ({stamp()})\n\n"
              f"Device: {device_name()}  \nCommand: `python benchmarks/train_faithful.py --steps {args.steps}` "
              f"(char LM on Tiny Shakespeare, {args.layers} layers x {args.hidden}, batch {args.batch}, "
              f"BPTT {args.bptt}, Adam lr {args.lr}, clip 1.0, seed {args.seed})\n\n")
    text = (header + table + f"\n\nRelative difference of final validation losses: {rel:.2%} (target < 2%).\n\n"
            "Validation loss curve (intermediate evaluations on 20 batches; last row: full validation split):\n\n"
            + md_table(["step"] + names, curve_rows) + "\n")
    print(text)
    out = out_dir()
    write_json(out / "train_faithful.json", {"args": vars(args), "device": device_name(), "results": results})
    (out / "train_faithful.md").write_text(text)


if __name__ == "__main__":
    main()
