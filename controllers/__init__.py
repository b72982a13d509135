"""Search controllers behind one interface: `ask(n)`, `tell(assignment, outcome)`,
`state_dict()` / `load_state_dict()`.

| name | what |
| --- | --- |
| `random` | uniform samples (the baseline) |
| `evolution` | regularized (aging) evolution, Real et al. 2019 |
| `rl` | REINFORCE with an LSTM policy, Zoph & Le 2017 / ENAS |
| `tpe` | Optuna's TPE through ask-and-tell |
| `cmaes` | Optuna's CMA-ES (with margin) over the ordinal decisions |
| `nsga2` | Optuna's NSGA-II (several objectives) |
| `darts` | DARTS: a supernet job (bilevel), then the derived cell as a trial |

Modules are imported on first use, so `nas --help` does not pay for torch or optuna.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any, Iterator

from ..errors import UserError
from ..space import SearchSpace
from .base import COMMON_OPTIONS, Controller, Option, Outcome

_WHERE: dict[str, tuple[str, str]] = {
    "random": ("random_search", "RandomSearch"),
    "evolution": ("evolution", "RegularizedEvolution"),
    "rl": ("reinforce", "Reinforce"),
    "tpe": ("optuna_search", "TPEController"),
    "cmaes": ("optuna_search", "CmaEsController"),
    "nsga2": ("optuna_search", "NSGA2Controller"),
    "darts": ("darts", "Darts"),
}

SUMMARY: dict[str, str] = {
    "random": "uniform random samples",
    "evolution": "regularized (aging) evolution",
    "rl": "REINFORCE with an LSTM policy (Zoph & Le)",
    "tpe": "Optuna TPE",
    "cmaes": "Optuna CMA-ES over ordinal decisions",
    "nsga2": "Optuna NSGA-II (multi-objective)",
    "darts": "DARTS: differentiable supernet search (bilevel, 1st/2nd order; RC-DARTS penalty, GDAS sampler)",
}

# keys of a space file's `search { }` block that are not controller options
DRIVER_KEYS = ("controller", "trials", "seed")


class _Registry(Mapping):
    """name -> controller class, importing each module on first use."""

    def __init__(self) -> None:
        self._loaded: dict[str, type[Controller]] = {}
        self._extra: dict[str, type[Controller]] = {}

    def __getitem__(self, name: str) -> type[Controller]:
        if name in self._extra:
            return self._extra[name]
        if name not in _WHERE:
            raise KeyError(name)
        if name not in self._loaded:
            module, cls = _WHERE[name]
            self._loaded[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from _WHERE
        yield from (k for k in self._extra if k not in _WHERE)

    def __len__(self) -> int:
        return len(set(_WHERE) | set(self._extra))

    def register(self, name: str, cls: type[Controller]) -> None:
        """Add a controller (e.g. `darts`) under a command-line name."""
        self._extra[name] = cls


CONTROLLERS = _Registry()


def space_search_options(space: SearchSpace) -> dict[str, Any]:
    """Literal settings of the space file's `search { }` block (decisions are skipped)."""
    settings = space.program.settings.get("search", {}) if hasattr(space.program, "settings") else {}
    return {k: v for k, v in settings.items()
            if k not in DRIVER_KEYS and not (isinstance(v, tuple) and len(v) == 2 and v[0] == "decision")}


def make_controller(name: str, space: SearchSpace, seed: int = 0, **options: Any) -> Controller:
    """A controller by its command-line name; UserError for an unknown name or option.

    Options come from the space file's `search { }` block (defaults) and from `options`
    (the command line, which wins). A search-block key that is an option of another
    controller is ignored; one that is an option of no controller is an error."""
    if name not in CONTROLLERS:
        close = difflib.get_close_matches(name, list(CONTROLLERS), n=1)
        raise UserError(f"unknown controller '{name}'",
                        f"did you mean '{close[0]}'?" if close else f"controllers: {', '.join(CONTROLLERS)}")
    cls = CONTROLLERS[name]
    known = cls.all_options()
    merged: dict[str, Any] = {}
    for key, value in space_search_options(space).items():
        if key in known:
            merged[key] = value
            continue
        every = set(COMMON_OPTIONS).union(*(CONTROLLERS[other].all_options() for other in CONTROLLERS))
        if key not in every:
            close = difflib.get_close_matches(key, sorted(every), n=1)
            raise UserError(f"the search {{ }} block of space '{space.name}' sets '{key}', which is no controller's "
                            "option", f"did you mean '{close[0]}'?" if close else
                            f"options of '{name}': {', '.join(known)}")
    merged.update(options)
    unknown = sorted(set(merged) - set(known))
    if unknown:
        hints = [difflib.get_close_matches(k, list(known), n=1) for k in unknown]
        did = [f"'{h[0]}'" for h in hints if h]
        raise UserError(f"controller '{name}' has no option(s) {', '.join(unknown)}",
                        (f"did you mean {', '.join(did)}? " if did else "") + f"its options: {', '.join(known)}")
    return cls(space, seed=seed, **merged)


def controller_help(name: str | None = None) -> str:
    """One paragraph per controller: what it is and its options with defaults."""
    names = [name] if name else list(CONTROLLERS)
    lines = []
    for n in names:
        cls = CONTROLLERS[n]
        opts = ", ".join(f"{k}={o.default!r}" for k, o in cls.OPTIONS.items())
        lines.append(f"{n}: {SUMMARY.get(n, cls.__doc__ or '')}" + (f" [{opts}]" if opts else ""))
    lines.append("all: " + ", ".join(f"{k}={o.default!r}" for k, o in COMMON_OPTIONS.items()))
    return "\n".join(lines)


def option_table() -> dict[str, dict[str, Option]]:
    return {n: CONTROLLERS[n].all_options() for n in CONTROLLERS}


def __getattr__(attr: str):
    if attr == "RandomSearch":
        return CONTROLLERS["random"]
    raise AttributeError(attr)


__all__ = ["CONTROLLERS", "Controller", "Option", "Outcome", "controller_help", "make_controller",
           "space_search_options"]
