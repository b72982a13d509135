"""Task names -> constructors, and `make_task`, which turns a `TaskSpec` into a Task.

`make_task` checks everything it cheaply can (name, argument names, values, that
files exist) so that a search can reject a bad task before its first trial.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from nas.config import TaskSpec
from nas.tasks.base import Task, TaskError, did_you_mean
from nas.tasks.charlm import char_lm
from nas.tasks.synthetic import copy, parity, recall, sum_mod
from nas.tasks.wordlm import word_lm

TASKS: dict[str, Callable[..., Task]] = {
    "parity": parity,
    "sum_mod": sum_mod,
    "copy": copy,
    "recall": recall,
    "char_lm": char_lm,
    "word_lm": word_lm,
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def _usage(name: str) -> str:
    return f"{name}{inspect.signature(TASKS[name]).replace(return_annotation=inspect.Signature.empty)}"


def make_task(spec: TaskSpec | str) -> Task:
    """The Task a spec names, its inputs validated; TaskError with a hint otherwise."""
    if isinstance(spec, str):
        spec = TaskSpec(name=spec)
    name = spec.name
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}{did_you_mean(name, TASK_NAMES)}",
                        hint=f"known tasks: {', '.join(TASK_NAMES)}")
    factory = TASKS[name]
    sig = inspect.signature(factory)
    params = list(sig.parameters)
    for key in spec.kwargs:
        if key not in sig.parameters:
            raise TaskError(f"task {name!r} has no argument {key!r}{did_you_mean(key, params)}",
                            hint=f"usage: {_usage(name)}")
    if len(spec.args) > len(params):
        raise TaskError(f"task {name!r} takes at most {len(params)} positional arguments, "
                        f"got {len(spec.args)}", hint=f"usage: {_usage(name)}")
    try:
        bound = sig.bind(*spec.args, **spec.kwargs)
    except TypeError as e:
        missing = [p for p, v in sig.parameters.items()
                   if v.default is inspect.Parameter.empty and p not in spec.kwargs][len(spec.args):]
        if missing:
            raise TaskError(f"task {name!r} needs argument {missing[0]!r}",
                            hint=f"usage: {_usage(name)}") from e
        raise TaskError(f"task {name!r}: {e}", hint=f"usage: {_usage(name)}") from e
    return factory(*bound.args, **bound.kwargs)
