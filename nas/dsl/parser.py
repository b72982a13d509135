"""Parse a space file's text into `nas.dsl.ast.SpaceFile` (syntax only, no meaning).

Uses lark's LALR parser: errors come with a line and column, and nothing in the file is
ever evaluated as Python.
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import SpaceError
from . import ast

MAX_FILE_BYTES = 1_000_000

_TERMINAL_WORDS = {
    "NAME": "a name", "INAME_OPEN": "a name like n{i}", "INT": "an integer", "FLOAT": "a number",
    "STRING": 'a "string"', "_NL": "a new line", "SEMICOLON": "';'", "LPAR": "'('", "RPAR": "')'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'",
    "STAR": "'*'", "SLASH": "'/'", "PRIME": "a prime (')", "CELL": "'cell'", "BLOCK": "'model'/'train'/'search'",
    "__ANON_0": "'..'", "$END": "the end of the file",
}


MAX_NESTING = 64


class _TooDeep(Exception):
    def __init__(self, line: int, col: int):
        super().__init__("nesting too deep")
        self.line, self.col = line, col


class _DropNewlinesInParens:
    """Post-lexer: a newline inside (...) continues the line, as in Python; nesting
    deeper than MAX_NESTING is refused here, before it can exhaust the stack."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.open_parens: list = []  # tokens of the '(' not yet closed (read after a syntax error)

    def process(self, stream):
        self.open_parens = []
        depth = 0
        for tok in stream:
            if tok.type == "LPAR":
                depth += 1
                self.open_parens.append(tok)
                if depth > MAX_NESTING:
                    raise _TooDeep(tok.line, tok.column)
            elif tok.type == "RPAR":
                depth = max(0, depth - 1)
                if self.open_parens:
                    self.open_parens.pop()
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


_POSTLEX = _DropNewlinesInParens()


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("nas.dsl").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True,
                postlex=_POSTLEX, start=["start", "expr"])


def _unclosed_paren(err: UnexpectedInput, file: str) -> SpaceError | None:
    """A syntax error on a later line than an unclosed '(' is reported at the '('."""
    if not _POSTLEX.open_parens or isinstance(err, UnexpectedCharacters):
        return None
    tok = _POSTLEX.open_parens[-1]
    line = getattr(err, "line", None)
    if line is not None and line != -1 and line <= tok.line:
        return None
    return SpaceError("'(' is never closed", file=file, line=tok.line, col=tok.column,
                      hint=f"the parser noticed at line {line}" if line and line > 0 else "add the missing ')'")


class _BadNumber(Exception):
    def __init__(self, tok: Token, message: str):
        super().__init__(message)
        self.tok, self.message = tok, message


def _number(tok: Token, kind):
    text = str(tok)
    if len(text) > 40:
        raise _BadNumber(tok, f"number too long ({len(text)} characters)")
    try:
        value = kind(text)
        if not math.isfinite(float(value)):
            raise OverflowError
    except (OverflowError, ValueError):
        raise _BadNumber(tok, f"number {text} is out of range") from None
    return value


def _pos(meta_or_tok) -> ast.Pos:
    return ast.Pos(getattr(meta_or_tok, "line", 1) or 1, getattr(meta_or_tok, "column", 1) or 1)


@v_args(meta=True)
class _ToAst(Transformer):
    """lark tree -> ast dataclasses."""

    # integer expressions
    def iint(self, meta, c):
        return ast.IInt(int(c[0]), _pos(c[0]))

    def ivar(self, meta, c):
        return ast.IVar(str(c[0]), _pos(c[0]))

    def iadd(self, meta, c):
        return ast.IBin("+", c[0], c[1], _pos(meta))

    def isub(self, meta, c):
        return ast.IBin("-", c[0], c[1], _pos(meta))

    def imul(self, meta, c):
        return ast.IBin("*", c[0], c[1], _pos(meta))

    def ineg(self, meta, c):
        return ast.IBin("neg", c[0], None, _pos(meta))

    # names
    def plain_name(self, meta, c):
        return ast.Name(str(c[0]), None, _pos(c[0]))

    def interp_name(self, meta, c):
        return ast.Name(str(c[0])[:-1], c[1], _pos(c[0]))

    # expressions
    def int_lit(self, meta, c):
        return ast.Num(_number(c[0], int), _pos(c[0]))

    def float_lit(self, meta, c):
        return ast.Num(_number(c[0], float), _pos(c[0]))

    def string_lit(self, meta, c):
        return ast.Str(str(c[0])[1:-1], _pos(c[0]))

    def true_lit(self, meta, c):
        return ast.Bool(True, _pos(meta))

    def false_lit(self, meta, c):
        return ast.Bool(False, _pos(meta))

    def ref(self, meta, c):
        return ast.Ref(c[0], c[1] is not None, c[0].pos)

    def call(self, meta, c):
        args = tuple(c[1]) if c[1] is not None else ()
        return ast.Call(c[0], args, c[0].pos)

    def arglist(self, meta, c):
        return list(c)

    def range(self, meta, c):
        return ast.Range(c[0], c[1], c[0].pos)

    def kwarg(self, meta, c):
        return ast.KwArg(str(c[0]), c[1], _pos(c[0]))

    def _bin(op):  # noqa: N805 - small factory for the four arithmetic callbacks
        def method(self, meta, c):
            return ast.BinOp(op, c[0], c[1], _pos(meta))
        return method

    add = _bin("add")
    sub = _bin("sub")
    mul = _bin("mul")
    div = _bin("div")

    def neg(self, meta, c):
        return ast.Neg(c[0], _pos(meta))

    # statements
    def target(self, meta, c):
        return ast.Target(c[0], c[1] is not None, c[0].pos)

    def assign(self, meta, c):
        return ast.Assign(tuple(c[:-1]), c[-1], c[0].pos)

    def for_loop(self, meta, c):
        return ast.For(str(c[0]), c[1], c[2], tuple(c[3:]), _pos(meta))

    def setting(self, meta, c):
        return ast.Setting(str(c[0]), c[1], _pos(c[0]))

    def space_decl(self, meta, c):
        return ("space", str(c[0]), _pos(c[0]))

    def state_decl(self, meta, c):
        return ("state", [(str(t), _pos(t)) for t in c], _pos(meta))

    def choice_decl(self, meta, c):
        members = tuple((str(t), _pos(t)) for t in c[1:] if t is not None)
        return ("choice", ast.ChoiceSet(str(c[0]), members, _pos(c[0])), _pos(meta))

    def cell_block(self, meta, c):
        return ("cell", tuple(c[1:]), _pos(c[0]))

    def settings_block(self, meta, c):
        return ("block", (str(c[0]), tuple(c[1:])), _pos(c[0]))


def _describe_expected(expected: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(e, f"'{e.lower()}'" if e.isalpha() else e) for e in expected})
    if len(words) > 8:
        words = words[:8] + ["..."]
    return ", ".join(words)


def _syntax_error(err: UnexpectedInput, file: str, text: str) -> SpaceError:
    line, col = getattr(err, "line", None), getattr(err, "column", None)
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
        hint = "names are letters, digits and '_'; strings use double quotes; comments start with '#'"
        return SpaceError(f"syntax error: unexpected character {ch!r}", file=file, line=line, col=col, hint=hint)
    if isinstance(err, UnexpectedEOF):
        lines = text.splitlines() or [""]
        return SpaceError("syntax error: the file ends in the middle of a statement (missing '}' or ')'?)",
                          file=file, line=len(lines), col=len(lines[-1]) + 1,
                          hint=f"expected {_describe_expected(set(err.expected))}")
    if isinstance(err, UnexpectedToken):
        tok = err.token
        if tok.type == "$END":
            lines = text.splitlines() or [""]
            return SpaceError("syntax error: the file ends in the middle of a statement (missing '}' or ')'?)",
                              file=file, line=len(lines), col=len(lines[-1]) + 1,
                              hint=f"expected {_describe_expected(set(err.expected))}")
        shown = "a new line" if tok.type == "_NL" else repr(str(tok))
        hint = f"expected {_describe_expected(set(err.expected))}"
        if tok.type == "PRIME":
            hint = "strings use double quotes; ' only follows a state name, as in h'"
        return SpaceError(f"syntax error: unexpected {shown}", file=file, line=line, col=col, hint=hint)
    return SpaceError(f"syntax error: {err}", file=file, line=line, col=col)


def read_space_text(path: str | Path) -> str:
    """The file's text, or a SpaceError if it is missing, too big, or not UTF-8 text."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise SpaceError("no such file", file=name, hint="check the path of the space file")
    if p.is_dir():
        raise SpaceError("is a directory, not a space file", file=name)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SpaceError(f"cannot read the file: {exc.strerror}", file=name) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpaceError(f"file is {len(data)} bytes; space files are limited to {MAX_FILE_BYTES}", file=name,
                         line=1, col=1)
    return decode_space_bytes(data, name)


def decode_space_bytes(data: bytes, file: str) -> str:
    if b"\x00" in data:
        off = data.index(b"\x00")
        line = data[:off].count(b"\n") + 1
        raise SpaceError("this is a binary file, not a space file (NUL byte)", file=file, line=line,
                         col=off - (data.rfind(b"\n", 0, off) + 1) + 1, hint="space files are UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpaceError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", file=file, line=line, col=col,
                         hint="space files are UTF-8 text") from None


def parse_text(text: str, file: str = "<space>") -> ast.SpaceFile:
    """Parse the text of a space file. Raises SpaceError with file:line:col."""
    if not text.strip():
        raise SpaceError("empty space file", file=file, line=1, col=1,
                         hint="a space needs at least `state h` and a `cell { ... }` block; see docs/dsl.md")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        tree = _lark().parse(text, start="start")
        items = _ToAst().transform(tree).children
    except UnexpectedInput as err:
        raise (_unclosed_paren(err, file) or _syntax_error(err, file, text)) from None
    except VisitError as err:
        orig = err.orig_exc
        if isinstance(orig, _BadNumber):
            raise SpaceError(orig.message, file=file, line=orig.tok.line, col=orig.tok.column,
                             hint="numbers must be finite and at most 40 characters") from None
        raise SpaceError(f"syntax error: {orig}", file=file, line=1, col=1) from None
    except _TooDeep as err:
        raise SpaceError(f"parentheses nested more than {MAX_NESTING} deep", file=file, line=err.line, col=err.col,
                         hint="name intermediate nodes instead of nesting calls") from None
    except RecursionError:
        raise SpaceError("expression nested too deeply", file=file, line=1, col=1,
                         hint="name intermediate nodes instead of writing one huge expression") from None
    return _assemble(items, file, text)


def _assemble(items: list, file: str, text: str) -> ast.SpaceFile:
    out = ast.SpaceFile(file=file, text=text)

    def dup(what: str, pos: ast.Pos, first: ast.Pos | None):
        where = f" (first at line {first.line})" if first else ""
        raise SpaceError(f"duplicate {what}{where}", file=file, line=pos.line, col=pos.col,
                         hint="each declaration may appear once; merge them")

    for kind, value, pos in items:
        if kind == "space":
            if out.name is not None:
                dup("'space' declaration", pos, out.name_pos)
            out.name, out.name_pos = value, pos
        elif kind == "state":
            if out.states:
                dup("'state' declaration", pos, out.states_pos)
            out.states, out.states_pos = value, pos
        elif kind == "choice":
            if value.name in out.choices:
                dup(f"choice set '{value.name}'", value.pos, out.choices[value.name].pos)
            out.choices[value.name] = value
        elif kind == "cell":
            if out.cell is not None:
                dup("'cell' block", pos, out.cell_pos)
            out.cell, out.cell_pos = value, pos
        elif kind == "block":
            block, settings = value
            if block in out.blocks:
                dup(f"'{block}' block", pos, out.block_pos[block])
            out.blocks[block], out.block_pos[block] = settings, pos
    return out


def parse_expr(text: str, where: str = "<expr>") -> ast.Expr:
    """Parse one expression (e.g. a task given on the command line)."""
    if not text.strip():
        raise SpaceError("empty expression", file=where, line=1, col=1)
    try:
        return _ToAst().transform(_lark().parse(text, start="expr"))
    except UnexpectedInput as err:
        raise _syntax_error(err, where, text) from None


def parse_file(path: str | Path) -> ast.SpaceFile:
    return parse_text(read_space_text(path), str(path))


__all__ = ["parse_text", "parse_file", "parse_expr", "read_space_text"]
