"""Running trials: the worker function and the dispatchers that schedule it."""

from .dispatch import Dispatcher, Event, LocalDispatcher
from .trial import TrialSpec, execute_trial, worker_identity

__all__ = ["Dispatcher", "Event", "LocalDispatcher", "RayDispatcher", "TrialSpec", "execute_trial", "worker_identity"]


def __getattr__(name: str):
    # Ray is imported only by those who dispatch to it.
    if name == "RayDispatcher":
        from .ray_dispatch import RayDispatcher

        return RayDispatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
