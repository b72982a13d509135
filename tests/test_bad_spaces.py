"""Malformed space files are rejected at the right line, with a short message and no traceback.

Every `tests/data/bad_spaces/NN_what.cell` holds one mistake. Its first line says where the
error must be reported, and optional header comments right below it add more:

    # expect: 7                   1-based line of the mistake (required on line 1)
    # expect-text: lerning_rate   a substring of the message or its hint (repeatable)
    # xfail: why                  a known gap: the test is a strict xfail until it is fixed

Files that cannot hold a comment (the empty and whitespace-only ones) are listed in
HEADERLESS. For each file we check the library (`load_space` raises `SpaceError` with that
line) and the CLI (`nas space validate` exits 2 and prints `FILE:LINE:COL: message` plus an
optional `  hint: ...` line). The CLI takes about a second to start, so all files go through
one `nas space validate` invocation; a few are also run alone to check the exit code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nas.errors import SpaceError
from nas.space import load_space

BAD = Path(__file__).resolve().parent / "data" / "bad_spaces"
HEADERLESS = {"29_empty.cell": 1, "30_whitespace_only.cell": 1}
BINARY = ("31_binary_nul.cell", "32_invalid_utf8.cell")
# must match the path written in 33_python_import_payload.cell
PAYLOAD_MARKER = Path("/tmp/cellsearch-bad-spaces-PWNED-7c1f0e")
NAME_RE = re.compile(r"^\d\d_[a-z0-9_]+\.cell$")


# ---- the files and their headers ----------------------------------------------------------
@dataclass(frozen=True)
class Case:
    path: Path
    line: int | None
    texts: tuple[str, ...]
    xfail: str | None

    @property
    def id(self) -> str:
        return self.path.stem


def _case(path: Path) -> Case:
    if path.name in HEADERLESS:
        return Case(path, HEADERLESS[path.name], (), None)
    header = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.startswith(b"#"):
            break
        header.append(raw.decode("utf-8", errors="replace").rstrip("\r"))
    m = re.fullmatch(r"# expect: (\d+)\s*", header[0]) if header else None
    texts = tuple(h.split(":", 1)[1].strip() for h in header[1:] if h.startswith("# expect-text:"))
    xfail = next((h.split(":", 1)[1].strip() for h in header[1:] if h.startswith("# xfail:")), None)
    return Case(path, int(m.group(1)) if m else None, texts, xfail)


CASES = [_case(p) for p in sorted(BAD.glob("*.cell"))]
BATCH = [c for c in CASES if c.xfail is None]


def _param(c: Case):
    marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
    return pytest.param(c, id=c.id, marks=marks)


# ---- running the CLI --------------------------------------------------------------------------
def _nas_cmd() -> list[str]:
    if importlib.util.find_spec("nas.cli.__main__") is not None:
        return [sys.executable, "-m", "nas.cli"]
    script = Path(sys.executable).parent / ("nas.exe" if os.name == "nt" else "nas")
    if script.exists():
        return [str(script)]
    found = shutil.which("nas")
    if found:
        return [found]
    return [sys.executable, "-c", "from nas.cli.main import main; main()"]


def _env(columns: str | None = "4000") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["NO_COLOR"] = "1"
    if columns is not None:
        env["COLUMNS"] = columns  # rich wraps at 80 columns otherwise (see test_cli_does_not_wrap_errors)
    return env


def _validate(files: list[Path], columns: str | None = "4000") -> subprocess.CompletedProcess:
    return subprocess.run([*_nas_cmd(), "space", "validate", *map(str, files)], capture_output=True,
                          text=True, errors="replace", env=_env(columns), timeout=120)


def _records(stderr: str, files: list[Path]) -> tuple[list[str], dict[Path, list[list[str]]]]:
    """Split the stderr of one `validate` run into per-file reports (lines)."""
    prefixes = [(f"{p}:", p) for p in files]
    stray: list[str] = []
    out: dict[Path, list[list[str]]] = {}
    current: list[str] | None = None
    for line in stderr.splitlines():
        owner = next((p for pre, p in prefixes if line.startswith(pre)), None)
        if owner is not None:
            current = [line]
            out.setdefault(owner, []).append(current)
        elif current is not None:
            current.append(line)
        else:
            stray.append(line)
    return stray, out


@pytest.fixture(scope="module")
def batch():
    PAYLOAD_MARKER.unlink(missing_ok=True)
    files = [c.path for c in BATCH]
    proc = _validate(files)
    stray, records = _records(proc.stderr, files)
    return proc, stray, records


def _library_error(case: Case) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        load_space(case.path)
    return info.value


def _check_record(case: Case, err: SpaceError, record: list[str]) -> None:
    text = "\n".join(record)
    assert "Traceback" not in text
    assert record[0].startswith(f"{case.path}:{case.line}:"), f"expected line {case.line}, got:\n{text}"
    assert record[0].rstrip() == str(err), text  # the CLI prints exactly the library's message
    assert 1 <= len(record) <= 3, f"a report is one to three lines:\n{text}"
    if err.hint:
        assert record[1] == f"  hint: {err.hint}", text
        assert len(record) == 2, text
    else:
        assert len(record) == 1, text
    for t in case.texts:
        assert t in text, f"{t!r} not in:\n{text}"


# ---- the tests ----------------------------------------------------------------------------------
def test_folder_is_well_formed() -> None:
    assert len(CASES) >= 30
    for c in CASES:
        assert NAME_RE.match(c.path.name), f"{c.path.name}: name files NN_what.cell"
        assert c.line is not None, f"{c.path.name}: the first line must be '# expect: <line>'"
    assert len({c.path.name[:2] for c in CASES}) == len(CASES), "two files share a number"
    assert b"\x00" in (BAD / BINARY[0]).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        (BAD / BINARY[1]).read_bytes().decode("utf-8")
    attrs = (BAD / ".gitattributes").read_text()
    for name in BINARY:
        assert re.search(rf"^{re.escape(name)}\s+binary\b", attrs, re.M), f"{name} must be marked binary"
    assert (BAD / "29_empty.cell").read_bytes() == b""
    assert not (BAD / "30_whitespace_only.cell").read_text().strip()


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_space(case: Case, batch) -> None:
    err = _library_error(case)
    assert err.line == case.line, f"{case.path.name}: got {err} (expected line {case.line})"
    assert err.file == str(case.path)
    assert err.col is not None and err.col >= 1
    for t in case.texts:
        assert t in f"{err.message}\n{err.hint or ''}", f"{t!r} not in {err} / hint {err.hint!r}"
    if case.xfail is None:
        proc, _, records = batch
        assert proc.returncode == 2
        assert f"ok  {case.path}" not in proc.stdout
        assert len(records.get(case.path, [])) == 1, f"{case.path.name}: no single report in\n{proc.stderr}"
        record = records[case.path][0]
    else:  # not in the batch: a crash would end the batch run
        proc = _validate([case.path])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        record = proc.stderr.splitlines()
    _check_record(case, err, record)


def test_cli_batch_reports_every_file_and_nothing_else(batch) -> None:
    proc, stray, records = batch
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not stray, "\n".join(stray)
    assert proc.stdout.strip() == "", proc.stdout  # no "ok" line, no warnings
    assert sorted(records) == sorted(c.path for c in BATCH)


@pytest.mark.parametrize("name", ["01_syntax_error.cell", "05_undefined_node.cell", "31_binary_nul.cell"])
def test_cli_alone_exits_2(name: str) -> None:
    case = _case(BAD / name)
    proc = _validate([case.path])
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"{case.path}:{case.line}:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_payload_file_is_not_executed(batch) -> None:
    # the batch (CLI) has run 33_python_import_payload.cell; run it through the library too
    _library_error(_case(BAD / "33_python_import_payload.cell"))
    assert not PAYLOAD_MARKER.exists()


def test_generated_payloads_are_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    head = "state h\ncell {\n"
    payloads = {
        "import_single_quotes": f"{head}  h' = __import__('os').system('touch {marker}')\n}}\n",
        "import_double_quotes": f'{head}  h\' = __import__("os").system("touch {marker}")\n}}\n',
        "eval": f'{head}  h\' = eval("open(\'{marker}\', \'w\')")\n}}\n',
        "exec": f'{head}  h\' = tanh(x)\n  y = exec("import os; os.system(\'touch {marker}\')")\n}}\n',
        "open_call": f'{head}  h\' = open("{marker}", "w")\n}}\n',
        "hp_eval": f'{head}  h\' = tanh(x)\n}}\ntrain {{ lr = eval("open(\'{marker}\', \'w\')") }}\n',
        "dunder_attr": f"{head}  h' = x.__class__.__base__\n}}\n",
        "fstring": f'{head}  h\' = f"{{__import__(\'os\').system(\'touch {marker}\')}}"\n}}\n',
    }
    files = []
    for name, text in payloads.items():
        p = tmp_path / f"{name}.cell"
        p.write_text(text)
        files.append(p)
        with pytest.raises(SpaceError):
            load_space(p)
    proc = _validate(files)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    stray, records = _records(proc.stderr, files)
    assert not stray and sorted(records) == sorted(files), proc.stderr
    assert not marker.exists()


TWENTY_MISTAKES = """\
space twenty
state h, c
choice act = {tanh, relu, sigmoid}
cell {
  a = tahn(linear(x, h))                     # 1  unknown op (the first mistake: line 5)
  b = tanh(x, h)                             # 2  arity
  c = relu(linear(x))                        # 3  assigns to a state without a prime
  d = blend(a, b)                            # 4  arity
  e = tanh("text")                           # 5  string in a cell
  f = a / b                                  # 6  division by a node
  g = one_of()                               # 7  empty one_of
  d = relu(a)                                # 8  duplicate node
  for i in 8..1 { n{i} = tanh(a) }           # 9  inverted loop
  for j in 1..1000000000 { m{j} = tanh(a) }  # 10 huge loop
  k = mean(n0 .. m3)                         # 11 range with two prefixes
  q = tanh(nowhere)                          # 12 undefined node
  r = tanh(s); s = tanh(r)                   # 13 cycle
  y' = a                                     # 14 undeclared state
  p, p2, p3 = split(linear(x), 2)            # 15 split count
  h' = act(a, b)                             # 16 arity through a choice set
}                                            #    (and c is never updated)
model { dropout = 1.5; hidden = int_range("a", 3) }                         # 17, 18
train { lerning_rate = 0.1; lr = log_uniform(1e-2, 1e-4); task = "char_lm" }  # 19, 20
"""


def test_twenty_mistakes_report_the_first(tmp_path: Path) -> None:
    p = tmp_path / "twenty.cell"
    p.write_text(TWENTY_MISTAKES)
    with pytest.raises(SpaceError) as info:
        load_space(p)
    assert (info.value.line, info.value.col) == (5, 7), str(info.value)
    assert "unknown op 'tahn'" in info.value.message
    proc = _validate([p])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"{p}:5:"), proc.stderr
    assert len(lines) <= 2 and all(not ln.startswith(str(p)) for ln in lines[1:]), "one error only"


def test_cli_does_not_wrap_errors() -> None:
    case = _case(BAD / "23_unknown_train_key.cell")
    err = _library_error(case)
    proc = _validate([case.path], columns=None)
    _check_record(case, err, proc.stderr.splitlines())
