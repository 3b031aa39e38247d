"""`gsm8k`: GSM8K grade-school math word problems, test split (`openai/gsm8k`, config `main`).

Why this adapter exists
    The reference study measures CoT transfer on MedCalc-Bench and instruction induction only:
    one numeric task whose answers are scored against per-row limits and one free-text task. It
    has no plain, widely used multi-step arithmetic benchmark with a single exact numeric answer,
    which is the cleanest setting to ask whether model B follows model A's reasoning to the same
    number. GSM8K is that benchmark (1,319 test problems, integer answers).

How to add a dataset (this module is the worked example; see docs/datasets.md)
    1. One module under `cotransfer/datasets/` with a `DatasetAdapter` subclass decorated with
       `@register("name")`, a `version` (bump it when the prompt, sample or parser changes) and
       `remote = True` if `fetch` needs the network.
    2. `fetch(dest)` puts the raw files into `dest` at a pinned revision and returns provenance
       (repo id, requested and resolved revision, sha256 per file). The Hub helpers
       (`download_dataset`, `resolve_revision`) live in `datasets/base.py` and the table readers
       in `medcalc`; they are imported, not copied.
    3. `load(raw)` returns the items table (ITEM_SCHEMA) drawn once, in sample order, with stable
       ids; `load_all(raw)` every row, for `cotransfer score`.
    4. `parse_and_score(answer_text, item)` parses only the answer segment, never raises on model
       text and never evaluates it.
    5. An import line in `datasets/__init__.py`, a row in docs/datasets.md, tests with a fixture
       written in the dataset's official format.

Data stage
    Upstream stores the split as Parquet, `main/test-00000-of-00001.parquet`, columns `question`
    and `answer`; the answer is a worked solution that ends with `#### 1,234`. `fetch` downloads
    the files matching `{config}/{split}-*` with `huggingface_hub.snapshot_download` into `dest`
    (or copies a local Parquet/JSONL/CSV file given as `path:`, e.g. the original GitHub
    `test.jsonl`). Offline (`HF_HUB_OFFLINE=1`, no connection), huggingface_hub's `local_dir`
    mode never looks at the shared Hub cache, so `fetch` then takes the same files from the cache
    (`snapshot_download(..., local_files_only=True)`) and copies them into `dest`; the resolved
    commit is that snapshot's commit (`base.download_dataset`, shared with `medcalc`).

    `load` reads the split (several shards are concatenated in name order), takes the gold answer
    as the text after the last `####` with commas removed, and draws `n_items` rows with
    `numpy.random.RandomState(seed).choice(n_rows, n_items, replace=False)`, in the order numpy
    returns them; without `n_items` every row is used in file order. The item id is the row's
    0-based position in the split file (stable across samples and seeds); `meta` is
    `{"index": i}`. Option `config` (default "main"; "socratic" is the other upstream config),
    option `expected_rows` (e.g. 1319: fail on another size).

Scoring
    The answer is the first number after the *last* answer marker of the answer segment:
    "answer is" (so "The answer is", "The final answer is"), "answer:" (any case), "####", or the
    contents of a `\\boxed{...}`, whichever comes last; with no marker at all, the last number of
    the text. Numbers may carry thousands separators ("1,234"), a dollar sign ("$18", "-$5"), a
    sign and decimals; a trailing period is punctuation. Fractions, words and scientific notation
    are not read. Statuses: `ok`; `not_found` (empty text, or no marker and no number);
    `no_number` (a marker not followed by a number, or a number too large to be finite).
    Correctness is numeric equality with the gold number ("18.0" equals "18"); `correct` is None
    only if the gold itself is not a number.

Normalized answers (what consistency compares between models): integer values without a
decimal part ("18", "-3", "1234"), others `format(x, ".6g")` ("0.5", "3.14159"); -0 reads "0".
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path

import polars as pl

from cotransfer.datasets.base import (DatasetAdapter, Scored, data_files, download_dataset, register,
                                      resolve_revision)
from cotransfer.datasets.medcalc import TABLE_SUFFIXES, pick_table, read_table
from cotransfer.io import sha256_file


DEFAULT_REPO_ID = "openai/gsm8k"
DEFAULT_CONFIG = "main"
REQUIRED = ("question", "answer")
GOLD_MARKER = "####"

SYSTEM = ("Solve the following math word problem. Reason step by step, then finish with a final "
          "line of the form \"The answer is N.\" where N is a single number.")

# -- parsing -----------------------------------------------------------------------------------

# a number: optional sign and/or dollar sign ("-$5", "$-5"), digits with well-formed thousands
# separators ("1,234") or plain digits, optional decimals. It never starts inside a word ("x1"),
# after a dot or after a closing bracket, so the "-" of "5-3" or "(2)-1" is a minus, not a sign.
_NUMBER = re.compile(
    r"(?<![\w.)\]])(?P<s1>-)?\$?(?P<s2>-)?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|\.\d+)")
_MARKER = re.compile(r"\banswer\s*(?:is\b|:)|####", re.IGNORECASE)
_BOXED = "\\boxed{"
MAX_BOXED_CHARS = 1000


def _number_value(m: re.Match) -> float:
    x = float(m.group("body").replace(",", ""))
    return -x if (m.group("s1") is None) != (m.group("s2") is None) else x


def canonical(x: float) -> str:
    """Integers without ".0" ("18"), others six significant digits ("0.5"); "-0" reads "0"."""
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return format(x, ".6g")


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(position, contents) of the last `\\boxed{...}`, braces matched; an unclosed one runs to
    the end of the text. At most MAX_BOXED_CHARS characters are looked at."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = j = start + len(_BOXED)
    depth, end = 1, min(len(text), i + MAX_BOXED_CHARS)
    while j < end:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                break
        j += 1
    return start, text[i:j]


def extract_number(text: str | None) -> tuple[float | None, str]:
    """(value, status) of an answer segment; never raises, never evaluates the text."""
    if not text or not text.strip():
        return None, "not_found"
    text = text.replace("\u2212", "-")  # the Unicode minus sign
    marker = None
    for marker in _MARKER.finditer(text):
        pass
    boxed = _last_boxed(text)
    if boxed is not None and (marker is None or boxed[0] >= marker.start()):
        m = _NUMBER.search(boxed[1])
    elif marker is not None:
        m = _NUMBER.search(text, marker.end())
    else:
        m = None
        for m in _NUMBER.finditer(text):
            pass
        if m is None:
            return None, "not_found"
    if m is None:
        return None, "no_number"
    x = _number_value(m)
    if not math.isfinite(x):
        return None, "no_number"
    return x, "ok"


def gold_number(answer: str) -> str:
    """The gold answer of an upstream `answer` field: the text after the last "####", commas
    removed ("#### 1,234" -> "1234"); ValueError if there is no marker or it is not a number."""
    if GOLD_MARKER not in answer:
        raise ValueError(f"no {GOLD_MARKER!r} marker in answer {answer[-80:]!r}")
    gold = answer.rsplit(GOLD_MARKER, 1)[1].strip().replace(",", "")
    try:
        ok = math.isfinite(float(gold))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"gold answer after {GOLD_MARKER!r} is not a number: {gold!r}")
    return gold


def _gold_value(gold) -> float | None:
    try:
        x = float(str(gold).strip().replace(",", ""))
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def score_answer(answer_text: str | None, gold) -> Scored:
    x, status = extract_number(answer_text)
    if x is None:
        return Scored(None, False, False, status)
    g = _gold_value(gold)
    return Scored(canonical(x), True, None if g is None else x == g, "ok")


# -- files -------------------------------------------------------------------------------------


def split_files(root: Path, config: str, split: str) -> list[Path]:
    """The split's shards in a snapshot (`{config}/{split}-*`), in name order."""
    pattern = f"{config}/{split}-*"
    return [p for p in data_files(root)
            if fnmatch.fnmatch(p.relative_to(root).as_posix(), pattern)
            and p.name.lower().endswith(TABLE_SUFFIXES)]


def _table_files(raw: Path, config: str, split: str) -> list[Path]:
    if raw.is_file():
        return [raw]
    return split_files(raw, config, split) or [pick_table(raw, split)]


# -- adapter -----------------------------------------------------------------------------------


@register("gsm8k")
class GSM8K(DatasetAdapter):
    numeric_answers = True
    version = "1"
    remote = True

    @property
    def config(self) -> str:
        return str(self.spec.opts.get("config", DEFAULT_CONFIG))

    @property
    def repo_id(self) -> str:
        return self.spec.repo_id or DEFAULT_REPO_ID

    def fetch(self, dest: Path) -> dict:
        """Download (or copy) the split into `dest`; return its provenance (module docstring)."""
        spec = self.spec
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if spec.path:
            return self.copy_local_file(dest)

        patterns = [f"{self.config}/{spec.split}-*"]
        files, cached_commit = download_dataset(self.repo_id, spec.revision, patterns, dest,
                                                lambda root: split_files(root, self.config, spec.split))
        return {"dataset_repo_id": self.repo_id, "dataset_revision": spec.revision,
                "resolved_revision": resolve_revision(self.repo_id, spec.revision, dest, cached_commit),
                "data_files": [p.relative_to(dest).as_posix() for p in files],
                "files": {p.relative_to(dest).as_posix(): sha256_file(p) for p in files}}

    def check_inputs(self) -> None:
        """A local `path:` must be a readable table file with `expected_rows` rows when set."""
        super().check_inputs()
        self.local_rows()

    def available(self) -> int | None:
        """The rows of the local table, else `expected_rows` (1319 for the test split), else unknown."""
        return self.local_rows() if self.spec.path else self.expected_rows()

    def load(self, raw: Path) -> pl.DataFrame:
        """Draw the sample (module docstring) and build the items table in sample order."""
        return self._load(raw, sample=True)

    def load_all(self, raw: Path) -> pl.DataFrame:
        """Every row of the split as an item, in file order."""
        return self._load(raw, sample=False)

    def read(self, raw: Path) -> pl.DataFrame:
        """The split's rows (`question`, `answer`), shards concatenated in name order."""
        paths = _table_files(Path(raw), self.config, self.spec.split)
        tables = []
        for path in paths:
            t = read_table(path)
            missing = [c for c in REQUIRED if c not in t.columns]
            if missing:
                raise ValueError(f"{path}: missing GSM8K column(s) {missing} (has {t.columns})")
            tables.append(t.select(REQUIRED))
        table = pl.concat(tables)
        expected = self.spec.opts.get("expected_rows")
        if expected is not None and table.height != int(expected):
            raise ValueError(f"{paths[0]}: {table.height} rows, expected {expected} (wrong split or config?)")
        return table

    def _load(self, raw: Path, sample: bool) -> pl.DataFrame:
        import numpy as np

        table = self.read(raw)
        n = self.spec.n_items
        if not sample or n is None:
            positions = list(range(table.height))
        elif table.height < int(n):  # asked for: never fewer, silently
            raise ValueError(f"datasets.{self.spec.name}.n_items: {n} is more than the {table.height} rows of {raw}; "
                             "n_items must not exceed them")
        else:
            positions = np.random.RandomState(self.spec.seed).choice(
                table.height, size=int(n), replace=False).tolist()
        questions, answers = table["question"].to_list(), table["answer"].to_list()
        items = []
        for i in positions:
            try:
                gold = gold_number(answers[i] or "")
            except ValueError as e:
                raise ValueError(f"{raw}: row {i}: {e}") from None
            items.append({"item_id": str(i), "system": SYSTEM, "user": questions[i], "gold": gold,
                          "meta": {"index": i}})
        return self.items_frame(items)

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        return score_answer(answer_text, item.get("gold"))
