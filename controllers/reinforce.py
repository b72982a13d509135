"""REINFORCE with an LSTM policy (Zoph & Le, ICLR 2017; the ENAS controller, Pham et al. 2018).

The policy emits the space's decisions one after another. At each step an LSTM cell
reads the embedding of the previous decision's choice plus an embedding of the decision
about to be made; a linear head turns its output into logits. There is one head (one
softmax) per decision kind: all `op` decisions share one over the union of their op
labels, all `input` decisions one over the node names, all `alt` decisions one over their
alternatives; every hyperparameter decision has its own. The logits of the labels a
decision offers are divided by `temperature` and clipped with `tanh_constant * tanh(.)`
(ENAS). Decisions inactive under the choices made so far are skipped (conditional spaces).

Learning: reward = `reward` expression of the objective (default `-x` for a metric to
minimise, `x` otherwise; e.g. `80/val_ppl` as ENAS), minus an exponential moving average
baseline; with `normalize`, the advantage is divided by a moving estimate of the
reward's standard deviation. Every `batch_size` told results make one Adam step on
`-(advantage * log p(assignment)) - entropy_weight * entropy`. With several objectives the
reward is minus the fraction of results told so far that dominate this one (Pareto).
The policy is trained in the driver, on CPU. Asks may be batched; tells come in any order
(log-probabilities are recomputed under the current policy when it is updated).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import math
import operator
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..space import Assignment, SearchSpace
from .base import Controller, Option, Outcome, positive
from .objectives import dominates

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
_FUN = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "abs": abs, "min": min, "max": max}


class RewardFn:
    """A small arithmetic expression over `x` (the objective) and metric names."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise UserError(f"controller 'rl': reward={text!r} is not an expression: {exc.msg}",
                            "for example reward=-x or reward=80/val_ppl") from None
        self.names: set[str] = set()
        self._check(self.tree.body)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return
        if isinstance(node, ast.Name):
            self.names.add(node.id)
            return
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            self._check(node.left)
            self._check(node.right)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self._check(node.operand)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUN and not node.keywords:
            for a in node.args:
                self._check(a)
            return
        raise UserError(f"controller 'rl': reward={self.text!r}: only numbers, x, metric names, + - * / **, "
                        f"and {', '.join(_FUN)}(...) are allowed")

    def __call__(self, env: dict[str, float]) -> float:
        def ev(node: ast.AST) -> float:
            if isinstance(node, ast.Constant):
                return float(node.value)
            if isinstance(node, ast.Name):
                return float(env[node.id])
            if isinstance(node, ast.BinOp):
                return _BIN[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.UnaryOp):
                v = ev(node.operand)
                return -v if isinstance(node.op, ast.USub) else v
            if isinstance(node, ast.Call):
                return float(_FUN[node.func.id](*[ev(a) for a in node.args]))
            raise AssertionError(node)

        return float(ev(self.tree.body))


@contextlib.contextmanager
def one_thread():
    """The policy's tensors are tiny: one intra-op thread is fastest, and spares a busy
    machine (two threads on two loaded cores made an update 400x slower)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _to_b64(obj: Any) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _from_b64(text: str) -> Any:
    return torch.load(io.BytesIO(base64.b64decode(text)), weights_only=True)


class Policy(nn.Module):
    """The autoregressive LSTM policy over a space's decisions."""

    def __init__(self, space: SearchSpace, hidden: int, generator: torch.Generator):
        super().__init__()
        self.decisions = space.decisions
        vocabs: dict[str, list[str]] = {}
        self.group: list[int] = []
        idx: list[list[int]] = []
        keys: list[str] = []
        for d in self.decisions:
            key = d.kind if d.kind in ("input", "op", "alt") else f"hp:{d.name}"
            seen: dict[str, int] = {}
            labels = []
            for c in d.choices:
                lab = str(c) if d.kind in ("input", "op", "alt") else repr(c)
                seen[lab] = seen.get(lab, 0) + 1
                labels.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
            if key not in vocabs:
                vocabs[key] = []
                keys.append(key)
            voc = vocabs[key]
            for lab in labels:
                if lab not in voc:
                    voc.append(lab)
            self.group.append(keys.index(key))
            idx.append([voc.index(lab) for lab in labels])
        self.keys = keys
        self.choice_index = [torch.tensor(i, dtype=torch.long) for i in idx]
        n = max(1, len(self.decisions))
        self.pos = nn.Embedding(n, hidden)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.embed = nn.ModuleList(nn.Embedding(len(vocabs[k]), hidden) for k in keys)
        self.heads = nn.ModuleList(nn.Linear(hidden, len(vocabs[k])) for k in keys)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.hidden = hidden
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1, generator=generator)

    def run(self, batch: int, choices: torch.Tensor | None, generator: torch.Generator | None,
            temperature: float, tanh_constant: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (choices None) or score `choices` (B, n). Returns choices, log p, entropy."""
        n = len(self.decisions)
        h = torch.zeros(batch, self.hidden)
        c = torch.zeros(batch, self.hidden)
        prev = self.start.expand(batch, self.hidden)
        chosen = torch.zeros(batch, n, dtype=torch.long)
        active = torch.zeros(batch, n, dtype=torch.bool)
        logp = torch.zeros(batch)
        ent = torch.zeros(batch)
        for t, d in enumerate(self.decisions):
            if d.parent is None:
                act = torch.ones(batch, dtype=torch.bool)
            else:
                p, k = d.parent
                act = active[:, p] & (chosen[:, p] == k)
            active[:, t] = act
            if not bool(act.any()):
                continue
            h2, c2 = self.cell(prev + self.pos.weight[t], (h, c))
            g = self.group[t]
            logits = self.heads[g](h2).index_select(1, self.choice_index[t]) / temperature
            if tanh_constant > 0:
                logits = tanh_constant * torch.tanh(logits)
            lsm = torch.log_softmax(logits, dim=-1)
            if choices is None:
                k = torch.multinomial(lsm.detach().exp(), 1, generator=generator).squeeze(1)
            else:
                k = choices[:, t].clamp(0, d.size - 1)
            k = torch.where(act, k, torch.zeros_like(k))
            chosen[:, t] = k
            m = act.to(logp.dtype)
            logp = logp + m * lsm.gather(1, k.unsqueeze(1)).squeeze(1)
            ent = ent - m * (lsm.exp() * lsm).sum(-1)
            a2 = act.unsqueeze(1)
            h = torch.where(a2, h2, h)
            c = torch.where(a2, c2, c)
            prev = torch.where(a2, self.embed[g](self.choice_index[t][k]), prev)
        return chosen, logp, ent


class Reinforce(Controller):
    name = "rl"
    OPTIONS = {
        "hidden": Option(64, "LSTM policy width", (int,), positive, "a positive integer"),
        "lr": Option(0.01, "Adam learning rate of the policy", (float,), positive, "a positive number"),
        "batch_size": Option(8, "told results per policy update", (int,), positive, "a positive integer"),
        "temperature": Option(1.0, "logits are divided by it (ENAS: 5)", (float,), positive, "a positive number"),
        "tanh_constant": Option(2.5, "logits are clipped to c*tanh(logits/temperature); 0 turns it off", (float,),
                                lambda v: v >= 0, "a number >= 0"),
        "entropy_weight": Option(1e-3, "entropy bonus weight", (float,), lambda v: v >= 0, "a number >= 0"),
        "baseline_decay": Option(0.9, "decay of the moving-average reward baseline", (float,),
                                 lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "normalize": Option(True, "divide advantages by a moving std of the reward", (bool,)),
        "reward": Option(None, "reward expression of x (the objective) and metric names, e.g. 80/val_ppl "
                         "(default: -x to minimise, x to maximise)", (str,), nullable=True),
        "failed_reward": Option("worst", "reward of trials without an objective: 'worst' (the lowest seen) or a "
                                "number", (str, float), None, nullable=True),
        "penalize_infeasible": Option(True, "a sample that breaks max_params/max_ops/max_depth counts as a result "
                                      "with the worst reward seen", (bool,)),
        "grad_clip": Option(5.0, "gradient-norm clip of a policy update (0: off)", (float,), lambda v: v >= 0,
                            "a number >= 0"),
    }

    def __init__(self, space: SearchSpace, seed: int = 0, **options: Any):
        super().__init__(space, seed, **options)
        o = self.options
        fr = o["failed_reward"]
        if isinstance(fr, str) and fr != "worst":
            try:
                fr = float(fr)
            except ValueError:
                raise UserError(f"controller 'rl': failed_reward={fr!r} must be 'worst' or a number") from None
        self.failed_reward = fr
        if o["reward"] is not None and self.objectives.multi:
            raise UserError("controller 'rl': reward= applies to one objective; with several objectives the reward "
                            "is the Pareto dominance of the result")
        self.reward_fn = RewardFn(o["reward"]) if o["reward"] is not None else None
        self.gen = torch.Generator().manual_seed(int(seed) % (2**63))
        init = torch.Generator().manual_seed((int(seed) * 7919 + 1) % (2**63))
        self.policy = Policy(space, int(o["hidden"]), init)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=float(o["lr"]))
        self.baseline: float | None = None
        self.var: float | None = None
        self.buffer: list[tuple[list[int], float]] = []
        self.worst: float | None = None
        self.front: list[list[float]] = []  # values told so far (several objectives)
        self.asked = 0
        self.told = 0
        self.updates = 0

    # ---- asking ---------------------------------------------------------------------------
    def _sample(self, n: int) -> list[Assignment]:
        with torch.no_grad(), one_thread():
            chosen, _, _ = self.policy.run(n, None, self.gen, self.options["temperature"],
                                           self.options["tanh_constant"])
        return [self.unvec(row) for row in chosen.tolist()]

    def ask(self, n: int = 1) -> list[Assignment]:
        batch = self._sample(n)
        out = []
        for a in batch:
            queue = [a]

            def propose() -> Assignment:  # resample in blocks: one policy run per 16 proposals
                if not queue:
                    queue.extend(reversed(self._sample(16)))
                return queue.pop()

            out.append(self.draw(propose))
        self.asked += n
        return out

    def on_infeasible(self, a: Assignment) -> None:
        """A sample that broke a constraint is a (bad) result: the policy learns to avoid it."""
        if self.options["penalize_infeasible"] and self.worst is not None:
            self._learn(a, self.worst)

    def probabilities(self, a: Assignment | None = None) -> list[list[float]]:
        """Per decision, the policy's probabilities of its choices (conditioned on `a`'s
        earlier choices; for inspection and tests)."""
        a = self.space.normalize(a or {})
        probs: list[list[float]] = []
        with torch.no_grad(), one_thread():
            ch = torch.tensor([self.vec(a)], dtype=torch.long)
            pol = self.policy
            h = torch.zeros(1, pol.hidden)
            c = torch.zeros(1, pol.hidden)
            prev = pol.start.expand(1, pol.hidden)
            act = self.space.active(a)
            for t, d in enumerate(pol.decisions):
                if not act[t]:
                    probs.append([])
                    continue
                h, c = pol.cell(prev + pol.pos.weight[t], (h, c))
                g = pol.group[t]
                logits = pol.heads[g](h).index_select(1, pol.choice_index[t]) / self.options["temperature"]
                if self.options["tanh_constant"] > 0:
                    logits = self.options["tanh_constant"] * torch.tanh(logits)
                probs.append(torch.softmax(logits, -1)[0].tolist())
                prev = pol.embed[g](pol.choice_index[t][ch[:, t]])
        return probs

    # ---- learning -------------------------------------------------------------------------
    def reward(self, outcome: Outcome) -> float | None:
        """The reward of a result, None for a result without one (before failed_reward)."""
        if self.objectives.multi:
            v = self.objectives.vector(outcome)
            if v is None:
                return None
            worse_than = sum(1 for f in self.front if dominates(f, v))
            r = -worse_than / max(1, len(self.front))
            self.front.append(list(v))
            return r
        v = self.objectives.vector(outcome)
        if v is None:
            return None
        name = self.objectives.names[0] if self.objectives.names else "objective"
        x = outcome.objective if name == "objective" else outcome.metrics.get(name)
        if self.reward_fn is None:
            return -v[0]  # v is the value to minimise
        env = {k: float(val) for k, val in outcome.metrics.items() if val is not None}
        env["x"] = x
        try:
            r = self.reward_fn(env)
        except (KeyError, ZeroDivisionError, ValueError, OverflowError):
            return None
        return r if math.isfinite(r) else None

    def tell(self, assignment: Assignment, outcome: Outcome) -> None:
        self.told += 1
        r = self.reward(outcome)
        if r is None:
            if self.failed_reward == "worst":
                if self.worst is None:
                    return
                r = self.worst
            elif self.failed_reward is None:
                return
            else:
                r = float(self.failed_reward)
        else:
            self.worst = r if self.worst is None else min(self.worst, r)
        self._learn(assignment, r)

    def _learn(self, assignment: Assignment, r: float) -> None:
        decay = self.options["baseline_decay"]
        if self.baseline is None:
            self.baseline, self.var = r, 0.0
        adv = r - self.baseline
        self.var = decay * self.var + (1 - decay) * adv * adv
        self.baseline = decay * self.baseline + (1 - decay) * r
        if self.options["normalize"] and self.var > 1e-12:
            adv = adv / math.sqrt(self.var)
        self.buffer.append((self.vec(assignment), float(adv)))
        if len(self.buffer) >= self.options["batch_size"]:
            self._update()

    def _update(self) -> None:
        with one_thread():
            self._step()

    def _step(self) -> None:
        choices = torch.tensor([v for v, _ in self.buffer], dtype=torch.long)
        adv = torch.tensor([a for _, a in self.buffer], dtype=torch.float32)
        self.buffer = []
        _, logp, ent = self.policy.run(len(adv), choices, None, self.options["temperature"],
                                       self.options["tanh_constant"])
        loss = -(adv * logp).mean() - self.options["entropy_weight"] * ent.mean()
        self.opt.zero_grad()
        loss.backward()
        if self.options["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.options["grad_clip"])
        self.opt.step()
        self.updates += 1

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": _to_b64(self.policy.state_dict()), "optimizer": _to_b64(self.opt.state_dict()),
            "generator": base64.b64encode(bytes(self.gen.get_state().tolist())).decode("ascii"),
            "baseline": self.baseline, "var": self.var, "worst": self.worst,
            "buffer": [[v, a] for v, a in self.buffer], "front": self.front,
            "asked": self.asked, "told": self.told, "updates": self.updates, **self.base_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(_from_b64(state["policy"]))
        self.opt.load_state_dict(_from_b64(state["optimizer"]))
        self.gen.set_state(torch.tensor(list(base64.b64decode(state["generator"])), dtype=torch.uint8))
        self.baseline = state["baseline"]
        self.var = state["var"]
        self.worst = state["worst"]
        self.buffer = [(list(map(int, v)), float(a)) for v, a in state["buffer"]]
        self.front = [list(map(float, f)) for f in state.get("front", [])]
        self.asked = int(state["asked"])
        self.told = int(state["told"])
        self.updates = int(state["updates"])
        self.load_base_state(state)
