"""What one trial trains on (synthetic tasks, char/word language modelling) and the
training loop of one trial.

    task = make_task(TaskSpec(name="parity", kwargs={"length": 20}))   # TaskError if bad
    result = train_trial(task, rnn_factory, ModelConfig(), TrainConfig(steps=300))

`rnn_factory(input_size, hidden_size, num_layers, dropout) -> nn.Module` follows the
`torch.nn.LSTM(batch_first=True)` convention. Every task reports `val_loss`, the
default primary metric (mode "min").
"""

from nas.tasks.base import IGNORE_INDEX, Batch, Task, TaskError
from nas.tasks.model import RecurrentModel, RNNFactory, check_model_config, count_params, detach_state
from nas.tasks.registry import TASK_NAMES, TASKS, make_task
from nas.tasks.result import STATUSES, TrialResult
from nas.tasks.train import DEFAULT_STEPS, resolve_device, train_trial

__all__ = [
    "DEFAULT_STEPS", "IGNORE_INDEX", "STATUSES", "TASKS", "TASK_NAMES",
    "Batch", "RNNFactory", "RecurrentModel", "Task", "TaskError", "TrialResult",
    "check_model_config", "count_params", "detach_state", "make_task", "resolve_device", "train_trial",
]
