"""Search controllers behind one interface: `ask(n)`, `tell(assignment, outcome)`,
`state_dict()` / `load_state_dict()`."""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import UserError
from ..space import SearchSpace
from .base import Controller, Outcome
from .random_search import RandomSearch

CONTROLLERS: dict[str, type[Controller]] = {"random": RandomSearch}


def make_controller(name: str, space: SearchSpace, seed: int = 0, **options: Any) -> Controller:
    """A controller by its command-line name; UserError for an unknown name or option."""
    if name not in CONTROLLERS:
        close = difflib.get_close_matches(name, list(CONTROLLERS), n=1)
        raise UserError(f"unknown controller '{name}'",
                        f"did you mean '{close[0]}'?" if close else f"controllers: {', '.join(CONTROLLERS)}")
    try:
        return CONTROLLERS[name](space, seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"controller '{name}': {exc}", "see `nas search run --help` for its options") from None


__all__ = ["CONTROLLERS", "Controller", "Outcome", "RandomSearch", "make_controller"]
