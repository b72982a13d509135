"""nas.tasks: synthetic and LM tasks, make_task validation, and the train_trial loop (CPU)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.config import ModelConfig, TaskSpec, TrainConfig
from nas.tasks import (
    TASK_NAMES,
    TaskError,
    TrialResult,
    check_model_config,
    detach_state,
    make_task,
    train_trial,
)
from nas.tasks.synthetic import SYNTHETIC_METRICS, ParityTask

TINYSHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")
RESOURCE_METRICS = ("params", "tokens_per_s", "peak_mem_mb", "wall_time_s", "steps")
# Metrics that depend on the machine's speed, not on the computation.
TIMING = {"tokens_per_s", "peak_mem_mb", "wall_time_s"}


def lstm(i: int, h: int, n: int, d: float) -> nn.Module:
    return nn.LSTM(i, h, n, dropout=d, batch_first=True)


def gru(i: int, h: int, n: int, d: float) -> nn.Module:
    return nn.GRU(i, h, n, dropout=d, batch_first=True)


SMALL = ModelConfig(embed=16, hidden=24)
FEW = TrainConfig(steps=6, eval_every=3, eval_batches=2, batch_size=16)


def task_metrics(r: TrialResult) -> dict[str, float]:
    return {k: v for k, v in r.metrics.items() if k not in TIMING}


def spec(name: str, *args, **kwargs) -> TaskSpec:
    return TaskSpec(name=name, args=args, kwargs=kwargs)


class NaNAfter(nn.Module):
    """An LSTM whose output turns NaN (or inf) from the `after`-th forward pass in training."""

    def __init__(self, i: int, h: int, after: int = 1, value: float = math.nan):
        super().__init__()
        self.rnn = nn.LSTM(i, h, batch_first=True)
        self.after, self.value, self.calls = after, value, 0

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                out = out + self.value
        return out, state


# -- fixtures ------------------------------------------------------------------------

@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "héllo"]
    p.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)),
                 encoding="utf-8")
    return p


def write_ptb(folder: Path, lines: list[str], parts=(0.8, 0.1)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    a, b = int(len(lines) * parts[0]), int(len(lines) * (parts[0] + parts[1]))
    (folder / "train.txt").write_text("\n".join(lines[:a]) + "\n")
    (folder / "valid.txt").write_text("\n".join(lines[a:b]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[b:]) + "\n")
    return folder


@pytest.fixture
def ptb_folder(tmp_path: Path) -> Path:
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(40)]
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) for _ in range(200)]
    lines.append("zzz_only_in_test qqq_unseen")  # lands in test.txt: out of vocabulary
    return write_ptb(tmp_path / "ptb", lines)


# -- synthetic tasks -----------------------------------------------------------------

@pytest.mark.parametrize("task_spec", [
    spec("parity", length=6),
    spec("parity", length=6, running=True),
    spec("sum_mod", k=3, length=5),
    spec("copy", length=4, vocab=5),
    spec("recall", pairs=3, vocab=6),
    spec("recall", pairs=5, vocab=4),  # 2x/4x evaluations need repeated keys
])
@pytest.mark.parametrize("factory", [lstm, gru], ids=["lstm", "gru"])
def test_synthetic_task_trains_and_reports(task_spec, factory):
    task = make_task(task_spec)
    r = train_trial(task, factory, SMALL, FEW)
    assert r.status == "completed", r.error
    for k in SYNTHETIC_METRICS + RESOURCE_METRICS + ("train_loss",):
        assert math.isfinite(r.metrics[k]), k
    assert r.metrics["steps"] == 6
    assert r.metrics["params"] > 0
    assert 0 <= r.metrics["acc_4x"] <= 1
    assert [s for s, _ in r.curve] == [3, 6]
    assert {"val_loss", "val_acc", "train_loss", "lr"} <= set(r.curve[0][1])
    assert r.primary_metric == "val_loss" and r.mode == "min"
    assert r.objective == r.metrics["val_loss"]


@pytest.mark.parametrize("name", ["parity", "sum_mod", "copy", "recall"])
def test_synthetic_data_is_consistent(name):
    """Targets follow from the inputs; training lengths vary; evaluation lengths are fixed."""
    task = make_task(spec(name))
    gen = torch.Generator().manual_seed(0)
    x, y = task.generate(256, task.length, False, gen)
    assert x.shape == y.shape and x.dtype == y.dtype == torch.long
    assert x.min() >= 0 and x.max() < task.input_vocab
    labelled = y[y != -100]
    assert labelled.min() >= 0 and labelled.max() < task.num_classes
    pad = task.input_vocab - 1
    lengths = (x != pad).sum(1)
    assert lengths.unique().numel() > 1  # random lengths in training
    xe, _ = task.generate(64, task.length * 2, True, gen)
    assert (xe != pad).all()  # fixed full length in evaluation
    if name == "parity":
        for row_x, row_y in zip(x[:50], y[:50]):
            n = int((row_x != 2).sum())
            assert row_y[n - 1] == row_x[:n].sum() % 2
            assert (row_y[torch.arange(len(row_y)) != n - 1] == -100).all()
    if name == "copy":
        for row_x, row_y in zip(x[:50], y[:50]):
            n = int((row_x < task.vocab).sum())
            assert row_y[n + 1:2 * n + 1].tolist() == row_x[:n].tolist()
    if name == "recall":
        v = task.vocab
        for row_x, row_y in zip(x[:50], y[:50]):
            q_pos = int((row_x == 2 * v).nonzero()[0])
            keys, values = row_x[0:q_pos:2].tolist(), row_x[1:q_pos:2].tolist()
            assert len(set(keys)) == len(keys)
            answer = values[keys.index(int(row_x[q_pos + 1]))] - v
            assert row_y[q_pos + 1] == answer


def test_same_seed_same_metrics_other_seed_differs():
    task = make_task(spec("copy", length=4, vocab=5))
    cfg = ModelConfig(embed=16, hidden=24, layers=2, dropout=0.2, dropout_embed=0.1, dropout_out=0.1)
    a = train_trial(task, lstm, cfg, FEW, seed=3)
    b = train_trial(make_task(spec("copy", length=4, vocab=5)), lstm, cfg, FEW, seed=3)
    c = train_trial(task, lstm, cfg, FEW, seed=4)
    assert a.status == b.status == c.status == "completed"
    assert task_metrics(a) == task_metrics(b)
    assert a.curve == b.curve
    assert task_metrics(a) != task_metrics(c)


def test_callers_rng_state_is_left_alone():
    torch.manual_seed(123)
    random.seed(123)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(123)
    train_trial(make_task("parity"), lstm, SMALL, FEW, seed=9)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_parity_length_8_is_learned():
    task = make_task(spec("parity", length=8))
    r = train_trial(task, lstm, ModelConfig(embed=16, hidden=32),
                    TrainConfig(steps=300, lr=1e-2, batch_size=64, eval_every=100))
    assert r.status == "completed", r.error
    assert r.metrics["val_acc"] > 0.9, r.metrics


# -- statuses ------------------------------------------------------------------------

@pytest.mark.parametrize("after,value", [(1, math.nan), (3, math.inf)])
def test_non_finite_loss_is_diverged_not_an_exception(after, value):
    r = train_trial(make_task("parity"), lambda i, h, n, d: NaNAfter(i, h, after, value), SMALL,
                    TrainConfig(steps=10, eval_every=5))
    assert r.status == "diverged"
    assert r.diverged_step == after
    assert r.metrics["steps"] == after - 1
    assert r.error is None
    assert "val_loss" not in r.metrics and r.objective is None
    json.dumps(r.to_dict(), allow_nan=False)


def test_report_false_prunes():
    seen = []

    def report(step, metrics):
        seen.append((step, metrics))
        return step < 4

    r = train_trial(make_task("parity"), lstm, SMALL, TrainConfig(steps=20, eval_every=2), report=report)
    assert r.status == "pruned"
    assert [s for s, _ in seen] == [2, 4]
    assert r.metrics["steps"] == 4
    assert r.metrics["val_loss"] == seen[-1][1]["val_loss"]
    assert len(r.curve) == 2


def test_report_none_continues():
    r = train_trial(make_task("parity"), lstm, SMALL, TrainConfig(steps=4, eval_every=2),
                    report=lambda s, m: None)
    assert r.status == "completed"


def test_exception_in_training_is_failed_with_traceback():
    class Boom(nn.Module):
        def forward(self, x, state=None):
            raise RuntimeError("kaboom in the cell")

    r = train_trial(make_task("parity"), lambda i, h, n, d: Boom(), SMALL, FEW)
    assert r.status == "failed"
    assert "kaboom in the cell" in r.error and "Traceback" in r.error
    assert r.metrics["steps"] == 0


def test_keyboard_interrupt_propagates():
    class Stop(nn.Module):
        def forward(self, x, state=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_trial(make_task("parity"), lambda i, h, n, d: Stop(), SMALL, FEW)


def test_bad_tie_weights_fails_clearly(text_file):
    with pytest.raises(TaskError, match="embed == hidden"):
        check_model_config(ModelConfig(embed=16, hidden=24, tie_weights=True))
    task = make_task(spec("char_lm", str(text_file)))
    r = train_trial(task, lstm, ModelConfig(embed=16, hidden=24, tie_weights=True), FEW)
    assert r.status == "failed" and "embed == hidden" in r.error
    r = train_trial(make_task("parity"), lstm, ModelConfig(embed=16, hidden=16, tie_weights=True), FEW)
    assert r.status == "failed" and "tie_weights" in r.error


# -- budget, optimisers, lr decay ----------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers(optimizer):
    cfg = TrainConfig(steps=4, eval_every=2, optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0,
                      lr=0.1 if optimizer == "sgd" else 1e-3, weight_decay=1e-4, clip=0.0)
    r = train_trial(make_task("sum_mod"), lstm, SMALL, cfg)
    assert r.status == "completed", r.error


def test_default_budget_and_epochs_ignored_for_synthetic():
    with pytest.warns(UserWarning, match="no epochs"):
        r = train_trial(make_task(spec("parity", length=4)), lstm, SMALL,
                        TrainConfig(epochs=1, eval_every=1000, batch_size=8))
    assert r.metrics["steps"] == 200  # DEFAULT_STEPS


def test_seconds_budget_stops_early():
    r = train_trial(make_task("parity"), lstm, SMALL, TrainConfig(seconds=0.3, steps=100000, eval_every=10**6))
    assert r.status == "completed"
    assert 1 <= r.metrics["steps"] < 100000
    assert r.metrics["wall_time_s"] < 60


def test_lr_decays_when_validation_does_not_improve():
    class Flat(ParityTask):
        def evaluate(self, model, train_cfg, device, final):
            return {"val_loss": 1.0, "val_acc": 0.5}

    r = train_trial(Flat(length=4), lstm, SMALL,
                    TrainConfig(steps=8, eval_every=2, optimizer="sgd", lr=1.0, lr_decay=0.5))
    assert [m["lr"] for _, m in r.curve] == [1.0, 1.0, 0.5, 0.25]


def test_auto_device_and_trial_result_roundtrip():
    r = train_trial(make_task("parity"), lstm, SMALL, FEW, device="auto")
    assert r.status == "completed"
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = TrialResult.from_dict(d)
    assert back.status == r.status and back.metrics == r.metrics
    assert back.curve == r.curve and back.primary_metric == "val_loss"
    with pytest.raises(ValueError):
        TrialResult.from_dict({**d, "status": "weird"})


def test_detach_state_handles_tensor_and_tuples():
    a = torch.ones(2, requires_grad=True) * 2
    assert not detach_state(a).requires_grad
    h, c = detach_state((a, a))
    assert not h.requires_grad and not c.requires_grad
    assert detach_state(None) is None


# -- language modelling --------------------------------------------------------------

@pytest.mark.parametrize("factory", [lstm, gru], ids=["lstm", "gru"])
def test_char_lm_small_file(text_file, factory):
    task = make_task(spec("char_lm", str(text_file), seq_len=16))
    r = train_trial(task, factory, ModelConfig(embed=16, hidden=16, layers=2, dropout=0.1, tie_weights=True),
                    TrainConfig(steps=8, eval_every=4, eval_batches=2, batch_size=8))
    assert r.status == "completed", r.error
    assert math.isclose(r.metrics["val_bpc"], r.metrics["val_loss"] / math.log(2))
    assert r.metrics["val_loss"] < math.log(task.input_vocab) + 0.5
    assert r.metrics["tokens_per_s"] > 0
    assert set(task.vocab) == set(text_file.read_text(encoding="utf-8"))


def test_char_lm_epochs_budget(text_file):
    task = make_task(spec("char_lm", str(text_file), split=0.5))
    cfg = TrainConfig(epochs=0.5, batch_size=16, seq_len=32, eval_every=1000)
    r = train_trial(task, lstm, SMALL, cfg)
    assert r.metrics["steps"] == math.ceil(0.5 * task.steps_per_epoch(cfg))


@pytest.mark.skipif(not TINYSHAKESPEARE.exists(), reason="tinyshakespeare not available")
def test_char_lm_tinyshakespeare():
    task = make_task(spec("char_lm", str(TINYSHAKESPEARE)))
    r = train_trial(task, lstm, ModelConfig(embed=32, hidden=32),
                    TrainConfig(steps=10, eval_every=5, eval_batches=2, seq_len=32))
    assert r.status == "completed", r.error
    assert task.input_vocab == 65
    assert r.metrics["val_bpc"] < math.log2(65) + 0.5


@pytest.mark.parametrize("factory", [lstm, gru], ids=["lstm", "gru"])
def test_word_lm_ptb_folder(ptb_folder, factory):
    task = make_task(spec("word_lm", str(ptb_folder)))
    r = train_trial(task, factory, SMALL, TrainConfig(steps=6, eval_every=3, batch_size=4, seq_len=8))
    assert r.status == "completed", r.error
    for k in ("val_loss", "val_ppl", "test_loss", "test_ppl"):
        assert math.isfinite(r.metrics[k]), k
    assert math.isclose(r.metrics["val_ppl"], math.exp(r.metrics["val_loss"]), rel_tol=1e-9)
    assert "test_ppl" not in r.curve[0][1]  # test only in the final evaluation
    vocab = task.vocab
    assert "<eos>" in vocab and "<unk>" in vocab and "zzz_only_in_test" not in vocab
    test_ids = task.splits()["test"]
    assert (test_ids == vocab.index("<unk>")).sum() == 2


@pytest.mark.skipif(not TINYSHAKESPEARE.exists(), reason="tinyshakespeare not available")
def test_word_lm_on_tinyshakespeare_words(tmp_path):
    lines = [ln for ln in TINYSHAKESPEARE.read_text().splitlines() if ln.strip()][:3000]
    folder = write_ptb(tmp_path / "shakes", lines)
    r = train_trial(make_task(spec("word_lm", str(folder))), lstm, SMALL,
                    TrainConfig(steps=5, eval_every=5, eval_batches=2, batch_size=8, seq_len=16))
    assert r.status == "completed", r.error
    assert r.metrics["test_ppl"] > 1


# -- make_task validation ------------------------------------------------------------

def test_task_names():
    assert set(TASK_NAMES) == {"parity", "sum_mod", "copy", "recall", "char_lm", "word_lm"}


def test_unknown_task_name_suggests():
    with pytest.raises(TaskError) as e:
        make_task(spec("partiy"))
    assert "partiy" in str(e.value) and "parity" in str(e.value)
    assert "char_lm" in e.value.hint


def test_unknown_kwarg_named():
    with pytest.raises(TaskError) as e:
        make_task(spec("parity", lenght=5))
    assert "'lenght'" in str(e.value) and "'length'" in str(e.value)


@pytest.mark.parametrize("task_spec,needle", [
    (spec("parity", length=0), "'length'"),
    (spec("parity", length="ten"), "'length'"),
    (spec("parity", running="yes"), "'running'"),
    (spec("sum_mod", k=1), "'k'"),
    (spec("copy", 5, 8, 3), "positional"),
    (spec("char_lm"), "'path'"),
    (spec("char_lm", "x.txt", split=1.5), "'split'"),
])
def test_bad_values_named(task_spec, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("hello world")
    with pytest.raises(TaskError, match=needle):
        make_task(task_spec)


def test_missing_word_lm_folder_and_files(tmp_path, ptb_folder):
    missing = tmp_path / "nowhere"
    with pytest.raises(TaskError, match=str(missing)):
        make_task(spec("word_lm", str(missing)))
    (ptb_folder / "valid.txt").unlink()
    with pytest.raises(TaskError) as e:
        make_task(spec("word_lm", str(ptb_folder)))
    assert str(ptb_folder) in str(e.value) and "valid.txt" in str(e.value)


@pytest.mark.parametrize("content,needle", [(None, "does not exist"), (b"", "empty"),
                                            (b"\x00\x01\x02binary\xff", "binary")])
def test_bad_char_lm_file(tmp_path, content, needle):
    p = tmp_path / "data.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(TaskError, match=needle) as e:
        make_task(spec("char_lm", str(p)))
    assert str(p) in str(e.value)


def test_relative_and_home_paths(tmp_path, monkeypatch, text_file):
    monkeypatch.chdir(text_file.parent)
    task = make_task(spec("char_lm", text_file.name))
    assert task.path == text_file.resolve()
    monkeypatch.setenv("HOME", str(text_file.parent))
    assert make_task(spec("char_lm", "~/" + text_file.name)).path == text_file.resolve()


def test_task_errors_are_user_errors():
    from nas.errors import UserError
    with pytest.raises(UserError):
        make_task(spec("nope"))
    with pytest.raises(ValueError):
        make_task(spec("nope"))


# -- CUDA (skipped on CPU-only machines) ---------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("factory", [lstm, gru], ids=["lstm", "gru"])
def test_cuda_trials(factory, text_file, ptb_folder):
    for task_spec in (spec("parity", length=6), spec("copy", length=4), spec("recall", pairs=3),
                      spec("char_lm", str(text_file)), spec("word_lm", str(ptb_folder))):
        r = train_trial(make_task(task_spec), factory, ModelConfig(embed=16, hidden=16, layers=2, dropout=0.1),
                        TrainConfig(steps=6, eval_every=3, batch_size=4, seq_len=8), device="cuda")
        assert r.status == "completed", r.error
        assert r.metrics["peak_mem_mb"] > 0
    r = train_trial(make_task("parity"), lambda i, h, n, d: NaNAfter(i, h, 2), SMALL, FEW, device="cuda")
    assert r.status == "diverged" and r.diverged_step == 2


def test_known_task_names_match_the_registry() -> None:
    from nas.config import KNOWN_TASKS
    from nas.tasks import TASK_NAMES

    assert tuple(sorted(KNOWN_TASKS)) == tuple(sorted(TASK_NAMES))


def test_matmul_precision_is_the_trials_and_restored_after():
    """`train.matmul_precision` is in force while the trial builds and trains its model (torch's
    global fp32 matmul setting, which the fused kernels follow) and the caller's comes back."""
    seen = []

    def factory(i: int, h: int, n: int, d: float) -> nn.Module:
        seen.append(torch.get_float32_matmul_precision())
        return lstm(i, h, n, d)

    before = torch.get_float32_matmul_precision()
    r = train_trial(make_task("parity"), factory, SMALL, FEW.model_copy(update={"matmul_precision": "high"}))
    assert r.status == "completed", r.error
    assert seen == ["high"] and torch.get_float32_matmul_precision() == before == "highest"
    with pytest.raises(ValueError, match="matmul_precision"):
        TrainConfig(matmul_precision="low")
