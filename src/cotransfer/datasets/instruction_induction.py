"""`instruction_induction`: infer the instruction behind five demonstrations (method.md 4.2).

Raw layout (what `fetch` writes and what `load` reads; a local `path:` must look the same)::

    <raw>/induce/<task>.json       {"examples": {"1": {"input": "<full induction prompt>", ...}, ...}}
    <raw>/annotations/<task>.json  {"annotations": ["reference instruction", ...]}

This is the public benchmark's own format: `induce/` holds the files of its
`data/induction_input/` folder, where every example's `input` already is the classic prompt
("I gave a friend an instruction and five inputs. ... The instruction was"), and `annotations/`
those of `data/annotations/`. Two other shapes are accepted so that custom tasks need no
conversion: an example that holds its demonstrations separately (`"demonstrations": [{"input",
"output"}, ...]`, or parallel `"inputs"`/`"outputs"` lists) gets the classic prompt built from
them, and the annotations file may be a plain JSON list or the per-example form
`{"examples": {"1": {"annotations": [...]}}}`, flattened in order without repeats. A file of
single input/output pairs (the benchmark's `data/raw/induce/`) is refused: sampling from it would
give one-pair prompts, not the benchmark's items.

`fetch` downloads the eight original tasks (or `options.tasks`) from GitHub at the commit pinned
by `options.commit`; the twelve custom tasks of the original study are not upstream, so they come
from its released materials through `path:`. Sampling: per task, in name order,
`random.Random(seed).sample(ids in file key order, per_task)`, sorted numerically, which is what
the original's `random.seed(42); random.sample(...)` draws. `n_items` is not used: the item count
is tasks x per_task.

Scoring: the answer and every gold annotation are normalized (`normalize_instruction`); an
answer shorter than 3 characters after that is invalid (`not_found`). The rest is compared with
the task's annotations by the similarity backend that `options.similarity` names
(`cotransfer.similarity`): `exact` (default: normalized exact match against any annotation),
`embedding` (sentence-embedding cosine) or `bertscore` (the method's BERTScore F1, max over the
annotations, idf from the task's gold list, which every item carries); correct means the score
reaches `similarity_threshold`. `Scored.answer` is the normalized answer whatever the backend, so
consistency compares the same strings, and `Scored.score` is the similarity itself (0 for an
invalid answer, null when no annotation is left to judge by): the method's accuracy, the mean
F1 over a task's items, is the mean of that column. The pairwise consistency of 8.3 is
`cotransfer.ii_metrics.ii_consistency`, over the answers table.

Item ids are `<task>:<example id>` (`item_id`); `task_of` reads the task back from one, which is
how the metrics group items by task (the answers table does not carry the items' meta).

Before any job (`check_inputs`, `available`; `cotransfer.config.check_inputs`): a local `path:`
must be a folder with `induce/` and, for every task used, `induce/<task>.json` with at least
`per_task` examples and `annotations/<task>.json`; a local `similarity_model` folder must hold a
complete model (config.json, tokenizer, weights), and the `embedding` backend without one needs
the packaged model installed. The dataset's size is tasks x per_task.

Options: `tasks` (list), `per_task` (default 5), `commit` (40-hex sha, required for download),
`repo` (default orhonovich/instruction-induction), `induce_path` and `annotations_path` (paths in
the repository, `{task}` filled in), `similarity` and `similarity_*` (`cotransfer.similarity`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import string
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl

from cotransfer.datasets.base import DatasetAdapter, Scored, register
from cotransfer.io import sha256_file
from cotransfer.similarity import get_backend

ORIGINAL_TASKS = ("cause_and_effect", "larger_animal", "num_to_verbal", "orthography_starts_with",
                  "rhymes", "synonyms", "taxonomy_animal", "translation_en-fr")
REPO = "orhonovich/instruction-induction"
INDUCE_PATH = "data/induction_input/{task}.json"
ANNOTATIONS_PATH = "data/annotations/{task}.json"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
PER_TASK = 5
MIN_ANSWER_CHARS = 3
DOWNLOAD_TIMEOUT_S = 60

PROMPT_HEAD = ("I gave a friend an instruction and five inputs. The friend read the instruction and "
               "wrote an output for every one of the inputs.\nHere are the input-output pairs:\n\n")
PROMPT_TAIL = "\n\nThe instruction was"
TASK_SEPARATOR = ":"


def item_id(task: str, example_id: str) -> str:
    """The id of a task's example: `<task>:<example id>` (task names hold no separator)."""
    return f"{task}{TASK_SEPARATOR}{example_id}"


def task_of(item_id: str) -> str:
    """The task an item id names (the inverse of `item_id`)."""
    return item_id.partition(TASK_SEPARATOR)[0]


def build_prompt(demonstrations: list[tuple[str, str]]) -> str:
    """The benchmark's induction prompt around (input, output) pairs, spaced as upstream."""
    pairs = "\n\n".join(f"Input: {i}\nOutput: {o}" for i, o in demonstrations)
    return PROMPT_HEAD + pairs + PROMPT_TAIL


# -- normalization (method.md 4.2 step 2, 8.3 step 1) -------------------------------------------

_LEAD_IN = re.compile(r"the instruction (?:is|was)\s*:", re.IGNORECASE)
_MARKDOWN = re.compile(r"(\*\*|__|\*|`+|^\s{0,3}#{1,6}\s*|^\s*[-+>]\s+)", re.MULTILINE)
_PUNCT = str.maketrans("", "", string.punctuation + "\u201c\u201d\u2018\u2019\u2026")


def normalize_instruction(text: str | None) -> str:
    """Normalize an instruction for comparison; the same function serves answers and gold.

    Steps: keep the text after the last `The instruction is:` lead-in (the model may restate
    the prompt's open clause), remove Markdown emphasis, code, header, list and quote marks,
    replace " and " with a space (upstream's evaluate.py), keep the first line and the text
    before the first ".", lowercase, turn hyphens into spaces, drop punctuation, squeeze spaces.
    """
    if not text:
        return ""
    parts = _LEAD_IN.split(text)
    s = _MARKDOWN.sub("", parts[-1])
    s = s.replace(" and ", " ").strip()
    s = s.split("\n")[0].split(".")[0].lower().replace("-", " ")
    return " ".join(s.translate(_PUNCT).split())


# -- files -----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*.json")) if p.parent.name in ("induce", "annotations")}


def _urlopen(url: str, timeout: float):  # a seam for tests: the only network access
    return urllib.request.urlopen(url, timeout=timeout)


def download(url: str) -> bytes:
    """GET `url`; any failure is an error that names the URL (no silent partial fetch)."""
    try:
        with _urlopen(url, DOWNLOAD_TIMEOUT_S) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RuntimeError(f"could not download {url}: {e}") from e


def _numeric(example_id: str) -> tuple:
    """Sort key: numeric ids by value ("2" before "10"), anything else after them, as text."""
    return (0, int(example_id), "") if example_id.isdigit() else (1, 0, example_id)


def read_examples(path: Path) -> dict[str, dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, dict) or not examples:
        raise ValueError(f"{path}: expected {{'examples': {{id: {{...}}}}}} with at least one example")
    return examples


def read_annotations(path: Path) -> list[str]:
    """Reference instructions in file order, from any of the accepted annotation layouts."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        found = data["annotations"]
    elif isinstance(data, list):
        found = data
    elif isinstance(data, dict) and isinstance(data.get("examples"), dict):
        found = [a for ex in data["examples"].values() for a in (ex.get("annotations") or [])]
    else:
        found = []
    annotations = list(dict.fromkeys(str(a).strip() for a in found if str(a).strip()))
    if not annotations:
        raise ValueError(f"{path}: no reference instructions found")
    return annotations


def prompt_of(example: dict, where: str) -> str:
    """The user message of one example: its full prompt, or the prompt built from its pairs."""
    text = example.get("input")
    if isinstance(text, str) and "Input:" in text and "Output:" in text:
        return text
    demos = example.get("demonstrations")
    if isinstance(demos, list) and demos:
        return build_prompt([(d["input"], d["output"]) for d in demos])
    if isinstance(example.get("inputs"), list) and isinstance(example.get("outputs"), list):
        if len(example["inputs"]) != len(example["outputs"]):
            raise ValueError(f"{where}: 'inputs' and 'outputs' differ in length")
        return build_prompt(list(zip(example["inputs"], example["outputs"])))
    raise ValueError(f"{where}: neither a full induction prompt in 'input' nor demonstrations; a file "
                     "of single input/output pairs (data/raw/induce) is not an induction input")


# -- adapter -----------------------------------------------------------------------------------


@register("instruction_induction")
class InstructionInduction(DatasetAdapter):
    version = "1"
    remote = True
    local_path = "dir"  # <path>/induce/<task>.json, <path>/annotations/<task>.json
    size_unit = "items (tasks x per_task)"

    def __init__(self, spec):
        super().__init__(spec)
        # checked here, so that a bad option fails at the data stage; models load on first use
        self.similarity = get_backend(spec.opts, where=f"datasets.{spec.name}.options")

    def _tasks(self, default: tuple[str, ...] | list[str]) -> list[str]:
        tasks = self.spec.opts.get("tasks") or default
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        return sorted(dict.fromkeys(tasks))

    def per_task(self) -> int:
        k = self.spec.opts.get("per_task", PER_TASK)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"datasets.{self.spec.name}.options.per_task: expected an integer >= 1, got {k!r}")
        return k

    def _local_tasks(self) -> list[str]:
        return self._tasks(sorted(p.stem for p in (Path(self.spec.path) / "induce").glob("*.json")))

    def check_inputs(self) -> None:
        """The local task folder (module docstring) and the similarity backend's local weights."""
        super().check_inputs()
        key = f"datasets.{self.spec.name}"
        k = self.per_task()
        if self.spec.path:
            root = Path(self.spec.path)
            if not (root / "induce").is_dir():
                raise ValueError(f"{key}.path: {root} has no induce/ folder (the layout: induce/<task>.json, "
                                 "annotations/<task>.json)")
            tasks = self._local_tasks()
            if not tasks:
                raise ValueError(f"{key}.path: {root / 'induce'} holds no task file")
            lacking = [t for t in tasks if not (root / "induce" / f"{t}.json").is_file()]
            if lacking:
                raise ValueError(f"{key}.options.tasks: no task file {root / 'induce'}/<task>.json for {lacking}")
            lacking = [t for t in tasks if not (root / "annotations" / f"{t}.json").is_file()]
            if lacking:
                raise ValueError(f"{key}.path: no annotations file {root / 'annotations'}/<task>.json for {lacking}")
            small = {}
            for task in tasks:
                try:
                    n = len(read_examples(root / "induce" / f"{task}.json"))
                except ValueError as e:  # not JSON, or no examples: the message names the file
                    raise ValueError(f"{key}.path: {e}") from None
                if n < k:
                    small[task] = n
            if small:
                raise ValueError(f"{key}.options.per_task: {k} is more than the examples of task(s) "
                                 + ", ".join(f"{t} ({n})" for t, n in small.items())
                                 + "; per_task must not exceed a task's examples")
        self._check_similarity_model()

    def _check_similarity_model(self) -> None:
        """Local weights the similarity backend will load: a `similarity_model` folder, or the
        packaged model of `embedding`. A Hub id (bertscore) is not checked: it may be in the
        Hugging Face cache of the machine that scores."""
        import importlib.util

        from cotransfer.config import model_dir_problem
        from cotransfer.similarity import EXTRA, OPTION, PACKAGED_MODEL

        opts, key = self.spec.opts, f"datasets.{self.spec.name}.options"
        backend, model = opts.get(OPTION, "exact"), opts.get(f"{OPTION}_model")
        if backend == "embedding" and model is None:
            if importlib.util.find_spec(PACKAGED_MODEL) is None:
                raise ValueError(f"{key}.{OPTION}: the embedding backend without {OPTION}_model reads the "
                                 f"packaged model {PACKAGED_MODEL!r}, which is not installed ({EXTRA}), or set "
                                 f"{OPTION}_model to a local folder")
            return
        if backend not in ("embedding", "bertscore") or not isinstance(model, str):
            return
        path = Path(model).expanduser()
        hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) is not None
        if backend == "bertscore" and hub_id and not path.exists():
            return  # a Hub id: its weights must be in the local Hub cache where scoring runs
        problem = model_dir_problem(str(path) if model.startswith("~") else model, chat_template=False)
        if problem:
            raise ValueError(f"{key}.{OPTION}_model: {problem}")

    def available(self) -> int:
        """tasks x per_task: the listed tasks, else the local folder's, else the eight upstream."""
        tasks = self._local_tasks() if self.spec.path else self._tasks(ORIGINAL_TASKS)
        return len(tasks) * self.per_task()

    def fetch(self, dest: Path) -> dict:
        """Copy `path:`, or download each task's prompts and annotations at the pinned commit."""
        spec, opts = self.spec, self.spec.opts
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if spec.path:
            src = Path(spec.path)
            if not (src / "induce").is_dir():
                raise FileNotFoundError(f"datasets.{spec.name}.path: {src} has no induce/ folder")
            for sub in ("induce", "annotations"):
                if (src / sub).is_dir():
                    shutil.copytree(src / sub, dest / sub, dirs_exist_ok=True)
            return {"source_path": str(src), "files": _files(dest)}

        commit = str(opts.get("commit") or "")
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"datasets.{spec.name}.options.commit: pin a 40-hex commit sha of "
                             f"{opts.get('repo', REPO)} (got {commit or 'nothing'})")
        repo = opts.get("repo", REPO)
        layout = (("induce", opts.get("induce_path", INDUCE_PATH)),
                  ("annotations", opts.get("annotations_path", ANNOTATIONS_PATH)))
        urls = {}
        for task in self._tasks(ORIGINAL_TASKS):
            for sub, template in layout:
                url = RAW_URL.format(repo=repo, commit=commit, path=template.format(task=task))
                blob = download(url)
                try:
                    json.loads(blob)
                except ValueError as e:
                    raise RuntimeError(f"{url} did not return JSON: {e}") from None
                target = dest / sub / f"{task}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
                urls[f"{sub}/{task}.json"] = url
        return {"source_repo": f"https://github.com/{repo}", "commit": commit, "urls": urls,
                "files": _files(dest)}

    def load(self, raw: Path) -> pl.DataFrame:
        """Sample `per_task` prompts per task (module docstring) and build the items table."""
        raw = Path(raw)
        found = sorted(p.stem for p in (raw / "induce").glob("*.json"))
        tasks = self._tasks(found)
        missing = [t for t in tasks if not (raw / "induce" / f"{t}.json").is_file()]
        if missing or not tasks:
            raise FileNotFoundError(f"{raw / 'induce'}: no task file for {missing or 'any task'}")
        bad = [t for t in tasks if TASK_SEPARATOR in t]
        if bad:  # the item id would not name its task unambiguously
            raise ValueError(f"{raw / 'induce'}: task names may not contain {TASK_SEPARATOR!r}: {bad}")
        k = int(self.spec.opts.get("per_task", PER_TASK))
        rows = []
        for task in tasks:
            examples = read_examples(raw / "induce" / f"{task}.json")
            annotations = read_annotations(raw / "annotations" / f"{task}.json")
            ids = list(examples)  # file key order, as the original's random.sample saw it
            if len(ids) < k:
                raise ValueError(f"{task}: {len(ids)} examples, fewer than per_task={k}")
            chosen = sorted(random.Random(self.spec.seed).sample(ids, k), key=_numeric)
            for ex_id in chosen:
                rows.append({
                    "item_id": item_id(task, ex_id),
                    "system": None,
                    "user": prompt_of(examples[ex_id], f"{task}.json example {ex_id}"),
                    "gold": annotations[0],
                    "meta": {"task": task, "example_id": ex_id, "annotations": annotations},
                })
        return self.items_frame(rows)

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        """Normalize, then judge against the annotations with the similarity backend (see above).

        `score` is the backend's similarity (best over the annotations); `correct` is it reaching
        the threshold. Both are None only when no annotation survives normalization (nothing to
        judge by); an invalid answer scores 0.
        """
        answer = normalize_instruction(answer_text if isinstance(answer_text, str) else None)
        if len(answer) < MIN_ANSWER_CHARS:
            return Scored(None, False, False, "not_found")
        meta = item.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)
        golds = meta.get("annotations") or ([item["gold"]] if item.get("gold") else [])
        match = self.similarity.match(answer, [normalize_instruction(str(g)) for g in golds])
        return Scored(answer, True, match.correct, "ok", match.score if match.correct is not None else None)
