"""The driver's side of a differentiable search (`--controller darts`).

Before the first ask, `run_supernet_phase` runs the supernet job
(`nas.workers.darts_job`) in this process (`--dispatcher local`) or as a Ray task with
the trial resources (`--gpus-per-trial`, default one GPU when the cluster has one), and
records it as trial 0 of the search: no architecture, `hyperparameters.darts =
"supernet"`, alpha's history as its per-step metrics (`nas results show`'s curve, the
`trial_step` table), final metrics `supernet_val_loss` and `search_time_s`, objective
null (so it never ranks). Checkpoints of the job go into the controller state, so
`nas search resume` continues the job. When it is done the controller derives the cell;
the driver's loop then trains it from scratch as a normal trial. The derived cell (a
fixed-cell space file), alpha's history (JSON) and its plot land in the run directory,
`<db dir>/runs/<search name>/` (`./runs/<name>/` for server databases).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

SUPERNET = "supernet"


def is_supernet_trial(t) -> bool:
    return t.assignment is None and isinstance(t.hyperparameters, dict) and t.hyperparameters.get("darts") == SUPERNET


def run_dir(search) -> Path:
    base = search.store.path.parent if search.store.path is not None else Path.cwd()
    return base / "runs" / search.record.name


def job_spec(search) -> dict[str, Any]:
    """Plain data for the job: the space text, the darts options, model/train/task, seed."""
    space, options = search.space, search.options
    o = search.controller.options
    hp = space.hyperparameters(space.normalize({}))
    model = hp.model.model_dump()
    for k in ("hidden", "embed"):
        if o.get(k):
            model[k] = o[k]
    train = {**hp.train.model_dump(), **options.train_overrides}
    for k in ("batch_size", "seq_len"):
        if o.get(k):
            train[k] = o[k]
    task = options.task or hp.task
    return {"space_text": space.text, "space_file": search.record.config.get("space_file", space.name),
            "options": dict(o), "model": model, "train": train, "task": task.model_dump(),
            "seed": options.seed, "device": train.get("device") or "auto", "cwd": str(Path.cwd())}


def _supernet_trial(search):
    for t in search.store.trials(search.record.id):
        if is_supernet_trial(t):
            return t
    return search.store.add_trial(search.record.id, architecture_id=None, assignment=None,
                                  hyperparameters={"darts": SUPERNET, **search.controller.options},
                                  config_hash=None)


def _events(dispatcher, spec: dict[str, Any], checkpoint: str | None, holder: dict[str, Any]) -> Iterator[dict]:
    from .workers import LocalDispatcher
    from .workers.darts_job import run_darts_job, submit_darts_job

    if isinstance(dispatcher, LocalDispatcher) or not hasattr(dispatcher, "gpus_per_trial"):
        yield from run_darts_job(spec, checkpoint)
        return
    import ray

    if dispatcher.gpus_per_trial > 0:
        spec = {**spec, "device": "cuda" if not str(spec.get("device", "")).startswith("cuda") else spec["device"]}
    gen = submit_darts_job(spec, checkpoint, num_cpus=dispatcher.cpus_per_trial, num_gpus=dispatcher.gpus_per_trial)
    # kept to cancel, unless the dispatcher's shutdown ends it (a cancel may race: RayDispatcher.cancel_all)
    if not getattr(dispatcher, "ends_tasks_on_shutdown", False):
        holder["ray_gen"] = gen
    for ref in gen:
        yield ray.get(ref)


def run_supernet_phase(search, dispatcher, update: Callable, deadline: float | None = None) -> bool:
    """Run (or continue) the supernet job; True when done, False when the time budget ran out."""
    ctl, store, p = search.controller, search.store, search.progress
    trial = _supernet_trial(search)
    spec = job_spec(search)
    checkpoint = ctl.job["blob"] if ctl.job else None
    p.phase, p.phase_step, p.phase_total = "supernet", (ctl.job or {}).get("step", 0), None
    update(p)
    holder: dict[str, Any] = {}
    history: list[tuple[int, dict[str, float]]] = [(s, m) for s, m in store.curve(trial.id)]
    try:
        for ev in _events(dispatcher, spec, checkpoint, holder):
            kind = ev["kind"]
            if kind == "started":
                store.start_trial(trial.id, host=ev.get("host"), gpu=ev.get("gpu"), attempt=trial.attempt + 1)
                # start_trial clears the curve: keep alpha's history up to the checkpoint resumed from
                history = [h for h in history if h[0] <= p.phase_step]
                store.record_steps(trial.id, history)
                p.phase_total = ev["total"]
                p.running = 1
            elif kind == "history":
                store.record_steps(trial.id, [(ev["step"], ev["metrics"])])
                history = [h for h in history if h[0] < ev["step"]] + [(ev["step"], ev["metrics"])]
                p.phase_step = ev["step"]
                m = ev["metrics"]
                p.phase_stats = f"train {m['train_loss']:.4g}" + (
                    f"  alpha-val {m['alpha_val_loss']:.4g}" if "alpha_val_loss" in m else "")
            elif kind == "checkpoint":
                ctl.set_job_checkpoint(ev["step"], ev["blob"])
                search._checkpoint()
            elif kind == "done":
                derived = ctl.finish(ev["probs"])
                search._checkpoint()
                metrics = {**ev["metrics"]}
                store.finish_trial(trial.id, status="completed", metrics=metrics, objective=None,
                                   wall_time_s=metrics.get("search_time_s"))
                p.running = 0
                p.phase = None
                p.artifacts = write_artifacts(search, derived, history, metrics)
            update(p)
            if deadline is not None and time.time() >= deadline and ctl.probs is None:
                _cancel(holder)
                return False
    except (KeyboardInterrupt, SystemExit):
        _cancel(holder)
        raise
    except Exception as exc:
        _cancel(holder)
        store.finish_trial(trial.id, status="failed", error=traceback.format_exc(), metrics={}, objective=None)
        from .errors import UserError

        raise UserError(f"the darts supernet job failed: {type(exc).__name__}: {exc}",
                        f"`nas search resume {search.record.name}` retries it from its last checkpoint") from None
    return ctl.probs is not None


def _cancel(holder: dict[str, Any]) -> None:
    gen = holder.get("ray_gen")
    if gen is not None:
        import ray

        try:
            ray.cancel(gen, force=True)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def write_artifacts(search, derived, history, metrics) -> dict[str, str]:
    """derived.cell (fixed-cell space file), alpha.json (history) and alpha.png (plot)."""
    out = run_dir(search)
    out.mkdir(parents=True, exist_ok=True)
    space = search.space
    cell = out / "derived.cell"
    cell.write_text(space.to_dsl(derived, name=f"{space.name}_darts"))
    hist = out / "alpha.json"
    hist.write_text(json.dumps({"search": search.record.name, "space": space.name, "metrics": metrics,
                                "probs": search.controller.probs, "derived": derived,
                                "history": [[s, m] for s, m in history]}, indent=1))
    files = {"derived cell": str(cell), "alpha history": str(hist)}
    png = plot_alpha(history, out / "alpha.png")
    if png:
        files["alpha plot"] = png
    return files


def plot_alpha(history, path: Path) -> str | None:
    """softmax(alpha) over steps, one panel per decision; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not history:
        return None
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for step, m in history:
        for key, v in m.items():
            if key.startswith("alpha/") and v is not None:
                _, dec, label = key.split("/", 2)
                series.setdefault(dec, {}).setdefault(label, []).append((step, v))
    n = len(series)
    if n == 0:
        return None
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (dec, lines) in zip(axes.flat, series.items()):
        for label, pts in lines.items():
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=label, lw=1.2)
        ax.set_title(dec, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        if len(lines) <= 8:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("softmax(alpha) over supernet steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
