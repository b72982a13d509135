"""Small helpers shared by the benchmark scripts (run from the repository root)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time as _time
from pathlib import Path
from typing import Any, Callable


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
        return f"CPU {platform.processor() or platform.machine()} (torch {torch.__version__})"
    except Exception:  # noqa: BLE001
        return platform.machine()


def out_dir(default: str = "out") -> Path:
    d = Path(os.environ.get("OUT", default))
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- timing and checking helpers (benchmarks/scan.py, benchmarks/fused.py) -----------------
_T0 = _time.perf_counter()


def log(msg: str) -> None:
    """A progress line with the seconds since the script started (flushed: runs are watched live)."""
    print(f"[{_time.perf_counter() - _T0:7.1f} s] {msg}", flush=True)


def elapsed() -> float:
    return _time.perf_counter() - _T0


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], device, n: int = 1) -> float:
    """Mean milliseconds of `n` back-to-back calls: CUDA events on a GPU, perf_counter on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n
    t0 = _time.perf_counter()
    for _ in range(n):
        fn()
    return (_time.perf_counter() - t0) * 1e3 / n


def bench(fn: Callable[[], Any], device, reps: int = 10, budget_s: float = 1.0,
          warmup: Callable[[], Any] | None = None) -> dict[str, float]:
    """Time `fn` after warming it up (the first call compiles): returns ms per call and more.

    `warmup` (default: `fn` itself) runs once, synchronized and timed (`first_ms`: includes
    any compilation); then one timed call estimates the cost, and up to `reps - 1` further
    calls, as many as fit in `budget_s`, give the mean (`ms`). `reps=1` is one timed call
    after the warm-up (for slow eager loops).
    """
    t0 = _time.perf_counter()
    (warmup or fn)()
    sync(device)
    first_ms = (_time.perf_counter() - t0) * 1e3
    once = time_calls(fn, device, 1)
    n = max(0, min(reps - 1, int(budget_s * 1e3 / max(once, 1e-3))))
    ms = time_calls(fn, device, n) if n else once
    return {"ms": ms, "first_ms": first_ms, "calls": 1 + n}


def median_of_calls(fn: Callable[[], Any], device, max_calls: int = 5, budget_s: float = 5.0,
                    warmup: Callable[[], Any] | None = None) -> dict:
    """Single timed calls after a warm-up, up to `max_calls` of them within `budget_s` (at
    least one): their median. For host-bound eager loops, whose one call varies with the host
    (the reference loop of one small cell took 62-115 ms in single calls on one machine)."""
    (warmup or fn)()
    sync(device)
    calls = [time_calls(fn, device, 1)]
    while len(calls) < max_calls and sum(calls) + calls[-1] <= budget_s * 1e3:
        calls.append(time_calls(fn, device, 1))
    return {"ms": statistics.median(calls), "calls_ms": calls}


def rel_err(a, b) -> float:
    """Relative L2 error of `a` against `b` in float64; NaN if `a` is not finite (NaN never passes)."""
    import torch

    if a is None or b is None:
        return float("nan")
    if not torch.isfinite(a).all():
        return float("nan")
    a, b = a.double(), b.double()
    den = b.norm()
    if den == 0:
        return 0.0 if a.norm() == 0 else float("inf")
    return ((a - b).norm() / den).item()


def error_text(exc: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


# Nsight Compute: cycles per issued instruction a warp spends in each stall state (a quick run)
NCU_STALL_METRICS = r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
