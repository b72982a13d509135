"""The op vocabulary of a cell: one table that the DSL, the IR and the compilers share.

Keeping arity and commutativity in one place means the parser's arity errors, the
canonical hash (which sorts operands of commutative ops) and the backends agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    name: str
    min_args: int
    max_args: int | None  # None: any number >= min_args
    commutative: bool = False
    kind: str = "elementwise"  # elementwise | activation | linear | reduce | input | const
    doc: str = ""


_SPECS = [
    OpSpec("input", 0, 0, kind="input", doc="x or a state's previous value"),
    OpSpec("const", 0, 0, kind="const", doc="a numeric constant"),
    OpSpec("linear", 1, None, commutative=True, kind="linear",
           doc="sum of one learned matrix per input plus a single bias"),
    OpSpec("add", 2, None, commutative=True, doc="elementwise sum"),
    OpSpec("mul", 2, None, commutative=True, doc="elementwise product"),
    OpSpec("sub", 2, 2, doc="a - b"),
    OpSpec("neg", 1, 1, doc="-a"),
    OpSpec("blend", 3, 3, doc="blend(z, a, b) = z*a + (1-z)*b"),
    OpSpec("mean", 1, None, commutative=True, kind="reduce", doc="mean of the inputs"),
    OpSpec("max", 2, None, commutative=True, doc="elementwise maximum"),
    OpSpec("tanh", 1, 1, kind="activation"),
    OpSpec("sigmoid", 1, 1, kind="activation"),
    OpSpec("relu", 1, 1, kind="activation"),
    OpSpec("identity", 1, 1, kind="activation"),
    OpSpec("gelu", 1, 1, kind="activation"),
    OpSpec("leaky_relu", 1, 1, kind="activation", doc="negative slope 0.01"),
    OpSpec("silu", 1, 1, kind="activation"),
    OpSpec("softplus", 1, 1, kind="activation"),
]

OPS: dict[str, OpSpec] = {spec.name: spec for spec in _SPECS}

# Names a space file may use for an op (NAS-Bench-NLP's names included, so its cells
# can be written verbatim).
ALIASES: dict[str, str] = {
    "sum": "add",
    "elementwise_sum": "add",
    "elementwise_prod": "mul",
    "prod": "mul",
    "sigm": "sigmoid",
    "activation_tanh": "tanh",
    "activation_sigm": "sigmoid",
    "activation_leaky_relu": "leaky_relu",
    "activation_relu": "relu",
    "id": "identity",
}

ACTIVATIONS = tuple(s.name for s in _SPECS if s.kind == "activation")
USER_OPS = tuple(s.name for s in _SPECS if s.kind not in ("input", "const"))


def resolve_op(name: str) -> str | None:
    """Canonical op name for a DSL spelling, or None if it is not an op."""
    name = ALIASES.get(name, name)
    return name if name in OPS and OPS[name].kind not in ("input", "const") else None


def arity_text(spec: OpSpec) -> str:
    if spec.max_args is None:
        return f"at least {spec.min_args} argument{'s' if spec.min_args != 1 else ''}"
    if spec.min_args == spec.max_args:
        return f"exactly {spec.min_args} argument{'s' if spec.min_args != 1 else ''}"
    return f"{spec.min_args} to {spec.max_args} arguments"


def check_arity(op: str, n: int) -> str | None:
    """An error message if `op` cannot take `n` operands, else None."""
    spec = OPS[op]
    if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
        return f"'{op}' takes {arity_text(spec)}, got {n}"
    return None
