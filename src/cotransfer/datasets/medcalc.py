"""`medcalc`: MedCalc-Bench v1.0, test split (method.md section 4.1).

Data stage
    `fetch` downloads the pinned dataset snapshot from the Hugging Face Hub (or copies a local
    CSV/Parquet file given as `path:`) and records the sha256 of every file and the resolved
    commit. Offline (`HF_HUB_OFFLINE=1`, no connection) it takes the files from the local Hub
    cache instead, as `gsm8k` does (`base.download_dataset`), and the resolved commit is that
    cache snapshot's. `load` reads the test table, checks that it still has the upstream row
    order, and draws the sample once: the positions are
    `numpy.random.RandomState(seed).choice(len(table), n, replace=False)`, which is exactly what
    the original's pandas `sample(n=100, random_state=42)` computes, taken in the order numpy
    returns them. The item id is the row's `Row Number`, so
    every later stage joins on it, never on position (pitfall 8).

Scoring
    `parse_and_score` sees only the generated answer segment (pitfall 6). It extracts the last
    `answer ... : value` match, then parses by calculator class in the order Date, (weeks, days),
    Integer, Decimal, so ID 69, listed under both Integer and (weeks, days), is read as a tuple
    (pitfall 7). Arithmetic in answers goes through `safe_eval`, an AST whitelist; model text is
    never passed to `eval` (pitfall 7).

Normalized answers (what consistency compares between models):
    integer   str(round(x)), Python's half-to-even round, the same value that is scored ("12")
    decimal   format(x, ".6g"): six significant digits, so 1.5, 1.50 and 1.5000000001 all read
              "1.5" and float noise never makes two equal answers differ; -0 reads "0"
    date      "M/D/YYYY" without zero padding ("3/7/2023")
    tuple     "(w, d)" ("(4, 3)")

Deliberate extension over the original parsers: an answer that is *only* arithmetic ("4 + 1",
"1 + 2 + 1") is evaluated safely in the Integer and Decimal classes, where the original took its
last number (1). Numbers written with thousands separators ("1,234.5") are read whole in the
Decimal class; in the Integer class the method's comma-list rule applies first.

Options: `expected_rows` (int; fail if the table has another size, e.g. 1047 for v1.0).
`n_items` defaults to 100.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import logging
import math
import operator
import re
from pathlib import Path

import polars as pl

from cotransfer.datasets.base import (TABLE_SUFFIXES, DatasetAdapter, Scored, data_files, download_dataset,
                                      register, resolve_revision, scan_data_table)
from cotransfer.io import sha256_file

log = logging.getLogger(__name__)

DEFAULT_N_ITEMS = 100

COLUMNS = ("Row Number", "Calculator ID", "Calculator Name", "Category", "Output Type", "Note ID",
           "Note Type", "Patient Note", "Question", "Relevant Entities", "Ground Truth Answer",
           "Lower Limit", "Upper Limit", "Ground Truth Explanation")
#: the columns the adapter reads; the others are kept in the raw file but not required
REQUIRED = ("Row Number", "Calculator ID", "Category", "Output Type", "Patient Note", "Question",
            "Ground Truth Answer", "Lower Limit", "Upper Limit")
#: what `fetch` takes from a Hub snapshot
HUB_PATTERNS = ("*.csv", "*.parquet", "*.jsonl", "*.json")

# -- prompt (method.md 4.1 "Prompt"; the wording of the MedCalc-Bench zero-shot template) -------

SCHEMA = ('{"step_by_step_thinking": str(your_step_by_step_thinking_procress_to_solve_the_question), '
          '"answer": str(short_and_direct_answer_of_the_question)}')
SYSTEM = ("You are a helpful assistant for calculating a score for a given patient note. Please think "
          "step-by-step to solve the question and then generate the required score. Your output "
          f"should only contain a JSON dict formatted as {SCHEMA}.")
USER = ("Here is the patient note:\n{note}\n\nHere is the task:\n{question}\n\n"
        "Please directly output the JSON dict formatted as " + SCHEMA.replace("{", "{{").replace("}", "}}")
        + ":")

#: values that mean the model echoed the requested format instead of filling it in
PLACEHOLDERS = frozenset({"str(short_and_direct_answer_of_the_question)",
                          "str(value which is the answer to the question)", "X.XX"})

# -- calculator classes (method.md 4.1 table), tried in this order ------------------------------

DATE_IDS = frozenset({13, 68})
TUPLE_IDS = frozenset({69})
INTEGER_IDS = frozenset({4, 15, 16, 17, 18, 20, 21, 25, 27, 28, 29, 32, 33, 36, 43, 45, 48, 51, 69})
DECIMAL_IDS = frozenset({2, 3, 5, 6, 7, 8, 9, 10, 11, 19, 22, 23, 24, 26, 30, 31, 38, 39, 40, 44, 46,
                         49, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67})
PARSER_ORDER = (("date", DATE_IDS), ("tuple", TUPLE_IDS), ("integer", INTEGER_IDS),
                ("decimal", DECIMAL_IDS))
#: IDs knowingly listed in two classes; the earlier class wins
DOUBLE_LISTED = frozenset({69})


def calculator_class(calculator_id: int) -> str | None:
    """The parser class of a calculator ID (first match in PARSER_ORDER), or None if unknown."""
    for name, ids in PARSER_ORDER:
        if calculator_id in ids:
            return name
    return None


def check_calculator_ids(ids) -> None:
    """Fail unless every ID falls into exactly one parser class (ID 69: the tuple class wins)."""
    problems = []
    for cid in sorted(set(ids)):
        classes = [name for name, members in PARSER_ORDER if cid in members]
        if not classes:
            problems.append(f"{cid}: no parser class")
        elif len(classes) > 1 and cid not in DOUBLE_LISTED:
            problems.append(f"{cid}: in several parser classes {classes}")
    if problems:
        raise ValueError("calculator IDs without a unique parser: " + "; ".join(problems))


# -- safe arithmetic ---------------------------------------------------------------------------


class UnsafeExpression(ValueError):
    """The text is not a plain arithmetic expression, or evaluating it failed."""


MAX_EXPR_CHARS = 200  # also keeps integer literals far below Python's int-parsing limits
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: math.pow}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = str.maketrans({"^": "**", "\u2212": "-", "\u00d7": "*", "\u00f7": "/"})


def safe_eval(text: str) -> float:
    """Evaluate arithmetic: number literals, + - * / ** (``^`` is power), unary signs, parentheses.

    Why it is safe: the text is parsed, never executed, and only the node types above are
    interpreted; names, calls, attributes, subscripts and everything else raise. Why it is fast on
    hostile input: the length is capped, and every value is a float, so ``10**10**10`` overflows
    at once (math.pow raises) instead of building a huge integer; infinities and NaN are errors.
    """
    expr = text.translate(_SYMBOLS).strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        raise UnsafeExpression(f"expression empty or longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
        value = _eval_node(tree.body)
    except UnsafeExpression:
        raise
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError) as e:
        raise UnsafeExpression(f"cannot evaluate {expr!r}: {type(e).__name__}") from None
    return value


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _finite(float(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _finite(_BINOPS[type(node.op)](_eval_node(node.left), _eval_node(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval_node(node.operand))
    raise UnsafeExpression(f"disallowed syntax: {type(node).__name__}")


def _finite(x: float) -> float:
    if not isinstance(x, float) or not math.isfinite(x):
        raise UnsafeExpression("result is not a finite real number")
    return x


# -- answer extraction -------------------------------------------------------------------------

# method.md 4.1: `answer`/`Answer`, the shortest run up to a colon on the same line, optional
# whitespace and (straight or curly) double quote, then the shortest value that ends at an optional
# closing quote, optional whitespace and a `}`, a newline or the end of the text. Last match wins.
# The value is taken here as everything up to the first `}` or newline, and the closing quote and
# whitespace are stripped afterwards: the same text, without a lazy group whose backtracking is
# quadratic on long lines.
_ANSWER_WORD = re.compile(r"[Aa]nswer")
_ANSWER = re.compile(r'[Aa]nswer[^\n:]*:\s*["\u201c\u201d]?([^}\n]*)')
_STRIP = " \t\r\n\"'`*,\u201c\u201d\u2018\u2019"
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _last_answer_match(text: str) -> str | None:
    """What `re.finditer` of the pattern would give last, in linear time.

    A plain finditer retries at every later "answer" of a line that has no colon left, scanning
    to the line's end each time (seconds on a degenerate "answer answer ..." output). No later
    "answer" on such a line can match, so the scan jumps to the next line instead.
    """
    value, pos = None, 0
    while (word := _ANSWER_WORD.search(text, pos)) is not None:
        line_end = text.find("\n", word.end())
        line_end = len(text) if line_end < 0 else line_end
        if text.find(":", word.end(), line_end) < 0:
            pos = line_end
            continue
        m = _ANSWER.match(text, word.start())
        value, pos = m.group(1), m.end()
    return value


def extract_answer(text: str | None) -> str | None:
    """The answer value of the last `answer: value` match, or None (not found / echoed schema)."""
    if not text:
        return None
    value = _last_answer_match(text)
    if value is None:
        return None
    # JSON written with ASCII escapes ("m\u00b2", "\u22128.1") reads as the characters meant
    value = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value).strip(_STRIP)
    if not value or value in PLACEHOLDERS or "short_and_direct_answer" in value:
        return None
    return value


# -- parsers by class --------------------------------------------------------------------------


class ParseError(ValueError):
    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


# a sign counts only where it cannot be a binary minus or a range dash ("5-3", "7.35-7.45")
_SIGN = r"(?:(?<![\w.)\]])-)?"
_NUMBER = re.compile(_SIGN + r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(_SIGN + r"\d+(?:\.\d+)?")
_OUT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*out of", re.IGNORECASE)
_NUMBER_LIST = re.compile(r"-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+")
_STR_WRAPPER = re.compile(r"str\((.*)\)", re.DOTALL)
_ARITHMETIC = re.compile(r"[\d\s.+\-*/^()\u2212\u00d7\u00f7]+")
_HAS_OPERATOR = re.compile(r"[\d)]\s*(?:[+\-*/^\u2212\u00d7\u00f7]|\*\*)\s*[-(\d]")
_MDRD = re.compile(r"(" + _SIGN + r"\d+(?:\.\d+)?)\s*mL/min/1\.73", re.IGNORECASE)
_PERCENT = re.compile(r"(" + _SIGN + r"\d+(?:\.\d+)?)\s*%")
_DATE = re.compile(r"(?<!\d)(\d{1,2})[/-](\d{1,2})[/-](\d{4})(?!\d)")
_TUPLE = re.compile(r"(\d+)(?!\d)\s*(?:weeks?\b|wks?\b|w\b)?\s*(?:,|\band\b)?\s*(\d+)", re.IGNORECASE)


def _to_float(s: str) -> float:
    """A matched number as a float; a literal too long to be finite is no number at all."""
    x = float(s.replace(",", ""))
    if not math.isfinite(x):
        raise ParseError("no_number")
    return x


# "7.35-7.45", "2-3", "3/4": a range or a ratio written without spaces, not a calculation
_UNSPACED = re.compile(r"\d[-/\u2212]\d")
# "3 (1 + 1 + 1)", "12.5 (10 + 2.5)": an answer followed by its derivation in parentheses
_DERIVATION = re.compile(r"^\s*(" + _SIGN + r"[\d.,]*\d)\s*\(([^()]*)\)\s*$")


def _drop_derivation(value: str) -> str:
    """The answer without a trailing parenthesized calculation ("3 (1 + 1 + 1)" -> "3")."""
    m = _DERIVATION.match(value)
    return m.group(1) if m and _HAS_OPERATOR.search(m.group(2)) else value


def _expression(value: str) -> float | None:
    """A bare arithmetic answer ("4 + 1") evaluated safely; None if the text is not one. A range
    or ratio without spaces ("7.35-7.45", "3/4") is not a calculation: method.md 4.1 takes the
    last number of it."""
    if _UNSPACED.search(value):
        return None
    if _ARITHMETIC.fullmatch(value) and _HAS_OPERATOR.search(value):
        try:
            return safe_eval(value)
        except UnsafeExpression:
            raise ParseError("bad_expr") from None
    return None


def parse_date(value: str) -> str:
    """The last month/day/year date, as "M/D/YYYY"; bad_date if there is none or it is invalid."""
    found = _DATE.findall(value)
    if not found:
        raise ParseError("bad_date")
    m, d, y = (int(x) for x in found[-1])
    try:
        _dt.date(y, m, d)
    except ValueError:
        raise ParseError("bad_date") from None
    return f"{m}/{d}/{y}"


def parse_tuple(value: str) -> tuple[int, int]:
    """(weeks, days): two integers, weeks first, with optional words, quotes and brackets.

    The two numbers must be separated (by a word, a comma or a space): the original's pattern
    also split "43" into (4, 3).
    """
    cleaned = re.sub(r"[\[\]()'\"\u201c\u201d\u2018\u2019]", " ", value)
    found = _TUPLE.findall(cleaned)
    if not found:
        raise ParseError("no_number")
    w, d = found[-1]
    return int(w), int(d)


def parse_integer(value: str) -> float:
    """Integer class: "N out of ..." -> N; a comma list -> its length; else the last number.

    A `str(...)` wrapper (the schema echoed around a value) is unwrapped first.
    """
    m = _STR_WRAPPER.fullmatch(value)
    if m:
        value = m.group(1).strip()
    value = _drop_derivation(value)
    m = _OUT_OF.search(value)
    if m:
        return _to_float(m.group(1))
    expr = _expression(value)
    if expr is not None:
        return expr
    m = _NUMBER_LIST.search(value)
    if m:
        return float(len(m.group(0).split(",")))
    found = _PLAIN_NUMBER.findall(value)
    if not found:
        raise ParseError("no_number")
    return _to_float(found[-1])


def parse_decimal(value: str) -> float:
    """Decimal class: str(<expr>) -> safe evaluation; "x mL/min/1.73" -> x; "x%" -> x/100;
    else the last number."""
    m = _STR_WRAPPER.search(value)
    if m:
        try:
            return safe_eval(m.group(1))
        except UnsafeExpression:
            raise ParseError("bad_expr") from None
    value = _drop_derivation(value)
    expr = _expression(value)
    if expr is not None:
        return expr
    found = _MDRD.findall(value)
    if found:
        return _to_float(found[-1])
    found = _PERCENT.findall(value)
    if found:
        return _to_float(found[-1]) / 100
    found = _NUMBER.findall(value)
    if not found:
        raise ParseError("no_number")
    return _to_float(found[-1])


def format_decimal(x: float) -> str:
    """Six significant digits (see the module docstring); "-0" reads "0"."""
    s = format(x, ".6g")
    return "0" if s in ("-0", "0") else s


def _number(v) -> float | None:
    if v is None:
        return None
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _meta(item: dict) -> dict:
    meta = item.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else meta


def score_answer(answer_text: str | None, calculator_id: int, gold: str,
                 lower: float | None, upper: float | None) -> Scored:
    """Parse and score one answer segment (method.md 4.1). Never raises on model text.

    `correct` is None (cannot be judged) only when the *gold* side does not parse, or a decimal
    row lacks its limits; an invalid answer is always incorrect.
    """
    kind = calculator_class(calculator_id)
    if kind is None:
        return Scored(None, False, False, "unknown_calculator")
    value = extract_answer(answer_text)
    if value is None:
        return Scored(None, False, False, "not_found")
    value = value.replace("\u2212", "-")  # the Unicode minus sign some models write
    try:
        if kind == "date":
            answer = parse_date(value)
            try:
                return Scored(answer, True, answer == parse_date(str(gold)), "ok")
            except ParseError:
                return Scored(answer, True, None, "ok")
        if kind == "tuple":
            w, d = parse_tuple(value)
            try:
                correct = (w, d) == parse_tuple(str(gold))
            except ParseError:
                correct = None
            return Scored(f"({w}, {d})", True, correct, "ok")
        if kind == "integer":
            rounded = round(parse_integer(value))  # half to even, as the original
            g = _number(gold)
            correct = None if g is None or g != int(g) else rounded == int(g)
            return Scored(str(rounded), True, correct, "ok")
        x = parse_decimal(value)
        correct = None if lower is None or upper is None else lower <= x <= upper
        return Scored(format_decimal(x), True, correct, "ok")
    except ParseError as e:
        return Scored(None, False, False, e.status)
    except (ValueError, OverflowError):  # defensive: a parser bug must not crash a scoring job
        log.exception("unexpected parse failure for calculator %s: %r", calculator_id, value)
        return Scored(None, False, False, "no_number")


# -- files ---------------------------------------------------------------------------------------


def _tables(root: Path) -> list[Path]:
    return [p for p in data_files(root) if p.name.lower().endswith(TABLE_SUFFIXES)]


def pick_table(root: Path, split: str) -> Path:
    """The split's table in a snapshot: the only CSV/Parquet/JSONL file, or the only one whose
    name contains the split name (MedCalc-Bench ships train and test files side by side)."""
    tables = _tables(root)
    if len(tables) == 1:
        return tables[0]
    named = [p for p in tables if split.lower() in p.name.lower()]
    if len(named) == 1:
        return named[0]
    listing = [str(p.relative_to(root)) for p in tables]
    raise ValueError(f"cannot pick the {split!r} table in {root}: candidates {listing}")


def read_table(path: Path) -> pl.DataFrame:
    """Read a table with every column as text (limits hold dates and tuples for some rows)."""
    return scan_data_table(path).select(pl.all().cast(pl.String)).collect()


# -- adapter -------------------------------------------------------------------------------------


@register("medcalc")
class MedCalc(DatasetAdapter):
    numeric_answers = True
    version = "2"  # 2: ranges, ratios and derivations in parentheses are not evaluated (method.md 4.1)
    remote = True

    def fetch(self, dest: Path) -> dict:
        """Download (or copy) the raw table into `dest`; return its provenance.

        A local `path:` is copied as is; otherwise the dataset snapshot at `revision` is fetched
        with huggingface_hub (tables and JSON only), offline from the local Hub cache
        (`base.download_dataset`). `resolved_revision` is the commit actually fetched: the
        revision itself when it is a sha, else the cache snapshot's commit (offline), else asked
        from the Hub, else read from the download metadata in `dest`; None if none of these works.
        """
        spec = self.spec
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if spec.path:
            return self.copy_local_file(dest)
        if not spec.repo_id:
            raise ValueError(f"datasets.{spec.name}: give repo_id or path")
        _, cached_commit = download_dataset(spec.repo_id, spec.revision, list(HUB_PATTERNS), dest, _tables)
        table = pick_table(dest, spec.split)
        return {"dataset_repo_id": spec.repo_id, "dataset_revision": spec.revision,
                "resolved_revision": resolve_revision(spec.repo_id, spec.revision, dest, cached_commit),
                "data_files": [str(table.relative_to(dest))],
                "files": {str(p.relative_to(dest)): sha256_file(p) for p in data_files(dest)}}

    def check_inputs(self) -> None:
        """A local `path:` must be a readable table file with `expected_rows` rows when set."""
        super().check_inputs()
        self.local_rows()

    def available(self) -> int | None:
        """The rows of the local table, else `expected_rows` (1047 for v1.0), else unknown."""
        return self.local_rows() if self.spec.path else self.expected_rows()

    def load(self, raw: Path) -> pl.DataFrame:
        """Draw the sample (see the module docstring) and build the items table in sample order."""
        return self._load(raw, sample=True)

    def load_all(self, raw: Path) -> pl.DataFrame:
        """Every row of the table as an item (for re-scoring), in file order."""
        return self._load(raw, sample=False)

    def _load(self, raw: Path, sample: bool) -> pl.DataFrame:
        import numpy as np

        spec = self.spec
        raw = Path(raw)
        path = pick_table(raw, spec.split) if raw.is_dir() else raw
        table = read_table(path)
        missing = [c for c in REQUIRED if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing MedCalc-Bench column(s) {missing}")
        table = table.with_columns(
            pl.col("Row Number", "Calculator ID").str.strip_chars().cast(pl.Float64).cast(pl.Int64))
        expected = spec.opts.get("expected_rows")
        if expected is not None and table.height != int(expected):
            raise ValueError(f"{path}: {table.height} rows, expected {expected} (wrong split or version?)")
        rows_no = table["Row Number"]
        if rows_no.null_count() or not (rows_no.diff().drop_nulls() > 0).all():
            raise ValueError(f"{path}: 'Row Number' is not strictly increasing; the sample is drawn on the "
                             "upstream row order, so the table must be in it")

        n = DEFAULT_N_ITEMS if spec.n_items is None else int(spec.n_items)
        if sample and spec.n_items is not None and table.height < n:  # asked for: never fewer, silently
            raise ValueError(f"datasets.{spec.name}.n_items: {n} is more than the {table.height} rows of {path}; "
                             "n_items must not exceed them")
        if not sample:
            positions = list(range(table.height))
        elif table.height < n:  # the default n_items: a smaller table is used whole
            log.warning("%s: %d rows < n_items=%d; using every row in file order", path, table.height, n)
            positions = list(range(table.height))
        else:
            positions = np.random.RandomState(spec.seed).choice(table.height, size=n, replace=False).tolist()
        rows = table.select(pl.all().gather(positions))
        if sample:
            check_calculator_ids(rows["Calculator ID"].to_list())

        items = []
        for r in rows.iter_rows(named=True):
            items.append({
                "item_id": str(r["Row Number"]),
                "system": SYSTEM,
                "user": USER.format(note=r["Patient Note"], question=r["Question"]),
                "gold": r["Ground Truth Answer"],
                "meta": {"calculator_id": r["Calculator ID"], "output_type": r["Output Type"],
                         "category": r["Category"], "lower": _number(r["Lower Limit"]),
                         "upper": _number(r["Upper Limit"]), "row_number": r["Row Number"]},
            })
        return self.items_frame(items)

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        meta = _meta(item)
        try:
            cid = int(meta.get("calculator_id"))
        except (TypeError, ValueError):
            return Scored(None, False, False, "unknown_calculator")
        return score_answer(answer_text, cid, item.get("gold"), _number(meta.get("lower")),
                            _number(meta.get("upper")))

    def category(self, item: dict) -> str | None:
        """The row's MedCalc-Bench `Category` (lab, risk, physical, ...), which `load` keeps in meta."""
        category = _meta(item).get("category")
        return str(category) if category not in (None, "") else None
