"""Running trials: the worker function and the dispatchers that schedule it."""

from .dispatch import Dispatcher, Event, LocalDispatcher
from .trial import TrialSpec, execute_trial, worker_identity

__all__ = ["Dispatcher", "Event", "LocalDispatcher", "TrialSpec", "execute_trial", "worker_identity"]
