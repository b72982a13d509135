"""The syntax tree of a space file. Every node carries its line and column so that
later stages (elaboration in `nas.space`) can report errors at file:line:col."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Pos:
    line: int
    col: int


# ---- integer expressions (loop bounds and n{i-1} indices) -------------------------
@dataclass(frozen=True)
class IInt:
    value: int
    pos: Pos


@dataclass(frozen=True)
class IVar:
    name: str
    pos: Pos


@dataclass(frozen=True)
class IBin:
    op: str  # + - * neg
    left: "IExpr"
    right: "IExpr | None"
    pos: Pos


IExpr = Union[IInt, IVar, IBin]


# ---- names -----------------------------------------------------------------------
@dataclass(frozen=True)
class Name:
    """`n` or `n{i-1}`: a base and an optional integer index appended to it."""

    base: str
    index: IExpr | None
    pos: Pos


# ---- expressions -----------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: float | int
    pos: Pos


@dataclass(frozen=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Bool:
    value: bool
    pos: Pos


@dataclass(frozen=True)
class Ref:
    name: Name
    primed: bool
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    op: str  # add sub mul div
    left: "Expr"
    right: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Range:
    start: Name
    end: Name
    pos: Pos


@dataclass(frozen=True)
class KwArg:
    key: str
    value: "Expr"
    pos: Pos


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple["Expr | Range | KwArg", ...]
    pos: Pos


Expr = Union[Num, Str, Bool, Ref, BinOp, Neg, Call]


# ---- statements and file -----------------------------------------------------------
@dataclass(frozen=True)
class Target:
    name: Name
    primed: bool
    pos: Pos


@dataclass(frozen=True)
class Assign:
    targets: tuple[Target, ...]
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class For:
    var: str
    lo: IExpr
    hi: IExpr
    body: tuple["Stmt", ...]
    pos: Pos


Stmt = Union[Assign, For]


@dataclass(frozen=True)
class Setting:
    key: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class ChoiceSet:
    name: str
    members: tuple[tuple[str, Pos], ...]
    pos: Pos


@dataclass
class SpaceFile:
    file: str
    text: str
    name: str | None = None
    name_pos: Pos | None = None
    states: list[tuple[str, Pos]] = field(default_factory=list)
    states_pos: Pos | None = None
    choices: dict[str, ChoiceSet] = field(default_factory=dict)
    cell: tuple[Stmt, ...] | None = None
    cell_pos: Pos | None = None
    blocks: dict[str, tuple[Setting, ...]] = field(default_factory=dict)
    block_pos: dict[str, Pos] = field(default_factory=dict)
