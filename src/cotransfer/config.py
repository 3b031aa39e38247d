"""Typed, frozen view of the validated configuration.

`validate()` checks a raw config dict against `workflow/schemas/config.schema.yaml`, fills the
schema's defaults in place and fails with one message per problem, each naming the offending key
path (``decoding.temperature: 'hot' is not of type 'number'``). `Study.from_dict()` then turns
the dict into frozen dataclasses, after the cross-references the schema cannot express (an
ensemble naming an unknown model, a strip model that does not exist) have been checked. Last,
`check_inputs()` checks on this machine, without a GPU or the network, the files the config
names (model folders, dataset paths and sizes, the ratings file, similarity weights), so that a
bad input fails in `cotransfer validate` and when Snakemake parses the workflow, before any job.
`Study.from_dict()` alone reads no file (beyond whether an `optional` model's folder exists):
it also serves planning and analysis where the inputs are not.

Each spec exports its *result-defining* part with `.params()`: the Snakefile passes that as rule
`params`, so changing a revision or a decoding value re-runs exactly the jobs it affects, while
operational knobs (`engine:`) re-run nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CONDITIONS = ("empty", "default", "sampled", "transfer", "ensemble")
VARIANTS = ("full", "stripped")
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names every offending key."""


# --------------------------------------------------------------------------------------------
# validation


def _defaulting_validator(schema: dict):
    """A Draft 2020-12 validator that also fills `default:` values into the instance."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    validate_props = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    return cls(schema)


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    # Unknown keys: name the key itself, not only its parent.
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra and error.schema.get("additionalProperties") is False:
            return ", ".join(".".join(parts + [k]) for k in extra)
    if error.validator == "propertyNames":
        return ".".join(parts) + f" (key {error.instance!r})"
    return ".".join(parts) or "<top level>"


def _describe(error) -> str:
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        return "unknown key (allowed: " + ", ".join(sorted(error.schema.get("properties", {}))) + ")"
    if error.validator == "oneOf" and error.schema.get("oneOf") and all(
        set(b) == {"required"} for b in error.schema["oneOf"]
    ):
        keys = [b["required"][0] for b in error.schema["oneOf"]]
        return "give exactly one of " + ", ".join(keys)
    return error.message


def load_schema(path: Path | str = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate(config: dict, schema_path: Path | str = SCHEMA_PATH, *, inputs: bool = True) -> dict:
    """Validate `config` in place, filling defaults. Raises ConfigError naming every bad key.

    `inputs=True` (the default, what `cotransfer validate` and the workflow use) also checks the
    files the config names on this machine (`check_inputs`); `inputs=False` only the config
    itself, for reading a study's settings where its inputs are not (e.g. analysis elsewhere)."""
    if not isinstance(config, dict):
        raise ConfigError("config: expected a mapping at the top level")
    validator = _defaulting_validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {_key_path(e)}: {_describe(e)}" for e in errors]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    study = Study.from_dict(config)  # cross-reference checks
    if inputs:
        check_inputs(study)
    return config


def load(path: Path | str, schema_path: Path | str = SCHEMA_PATH, *, inputs: bool = True) -> "Study":
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    return Study.from_dict(validate(raw, schema_path, inputs=inputs))


# --------------------------------------------------------------------------------------------
# inputs on this machine, before any job

#: files any one of which gives transformers/vLLM a tokenizer (tokenizer_config.json alone does not)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json")
#: `*.bin` files in a checkpoint folder that hold no model weights
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"})


def _where(path: str) -> str:
    return path if Path(path).is_absolute() else f"{path} (relative to the working directory {Path.cwd()})"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{path.name} is not valid JSON ({' '.join(str(e).split())[:200]})"
    return None


def model_dir_problem(path: str, *, chat_template: bool = True) -> str | None:
    """What keeps `path` from loading as a Hugging Face model folder, in one line, or None.

    A model folder has `config.json` (valid JSON), a tokenizer (one of TOKENIZER_FILES or a
    `*.tiktoken` file), weights (`*.safetensors` or `*.bin`; with a `*.index.json` shard index,
    every shard it lists) and, for a model the pipeline prompts (`chat_template`), a chat
    template (`chat_template.jinja`, `chat_template.json` or a `chat_template` entry of
    `tokenizer_config.json`). Relative paths are read from the working directory, as the jobs
    read them (`stages.prepare_model`)."""
    p = Path(path)
    if not p.exists():
        return f"no such folder {_where(path)}"
    if not p.is_dir():
        return f"{_where(path)} is a file, not a model folder"
    missing, broken = [], []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    elif problem := _json_problem(p / "config.json"):
        broken.append(problem)
    if not any((p / f).is_file() for f in TOKENIZER_FILES) and not any(p.glob("*.tiktoken")):
        missing.append("a tokenizer (" + ", ".join(TOKENIZER_FILES[:4]) + " or the like)")
    if chat_template and not _has_chat_template(p):
        missing.append("a chat template (chat_template.jinja, or chat_template in tokenizer_config.json)")
    indexes = sorted(p.glob("*.index.json"))  # sharded weights: one complete index is enough
    index_missing, index_broken = [], []
    for index in indexes:
        if problem := _json_problem(index):
            index_broken.append(problem)
            continue
        data = json.loads(index.read_text(encoding="utf-8"))
        shards = sorted(set(((data.get("weight_map") if isinstance(data, dict) else None) or {}).values()))
        absent = [s for s in shards if not (p / s).is_file()]
        if not shards:
            index_broken.append(f"{index.name} lists no weight shards")
        elif absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            index_missing.append(f"weight shard(s) {', '.join(absent[:3])}{more} (listed in {index.name})")
        else:
            index_missing, index_broken = [], []
            break
    missing += index_missing
    broken += index_broken
    if not indexes and not any(p.glob("*.safetensors")) and not [
            f for f in p.glob("*.bin") if f.name not in NOT_WEIGHTS]:
        missing.append("weights (*.safetensors or *.bin)")
    if not missing and not broken:
        return None
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + broken
    return f"{_where(path)} is not a complete model folder: {'; '.join(parts)}"


def _has_chat_template(p: Path) -> bool:
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((p / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_inputs(study: "Study") -> None:
    """Check, before any job, what the config names on this machine; no GPU, no network.

    - every local model (`models.*.path`, `aux_models.*.path`) is a complete model folder
      (`model_dir_problem`); an `optional` model whose folder is absent was already left out;
    - every dataset passes its adapter's `check_inputs` (a local `path:` exists and reads; the
      similarity backend's local weights), and an `n_items` above what the adapter says the
      dataset holds (`available()`, when known without the network) is refused: items are drawn
      without replacement and every item id is unique, so n_items must not exceed the rows;
    - the `preference.ratings` table exists and reads as ratings (`preference.load_ratings`).

    Hub models and datasets are not checked (that needs the network). Raises one ConfigError
    with a line per problem, each starting with its key (`models.toy_qwq.path: ...`)."""
    problems = []
    for group, specs in (("models", study.models), ("aux_models", study.aux_models)):
        for name, spec in specs.items():
            if spec.source == "local" and (problem := model_dir_problem(spec.path)):
                problems.append(f"{group}.{name}.path: {problem}")
    from cotransfer.datasets import get_adapter

    for name, d in study.datasets.items():
        try:
            adapter = get_adapter(d.adapter)(d)  # builds the similarity backend of II: checks its options
            adapter.check_inputs()
            available = adapter.available()
        except (ValueError, OSError) as e:
            message = " ".join(str(e).split())
            problems.append(message if message.startswith(f"datasets.{name}") else f"datasets.{name}: {message}")
            continue
        n = d.n_items
        if n is not None and available is not None and n > available:
            source = d.path or f"adapter {d.adapter}" + (f" with options {d.opts}" if d.opts else "")
            problems.append(f"datasets.{name}.n_items: {n} is more than the {available} {adapter.size_unit} "
                            f"of {source}; n_items must not exceed them (items are drawn without "
                            "replacement, each with its own id)")
    if study.preference is not None:
        from cotransfer.preference import load_ratings

        ratings = study.preference.ratings
        if Path(ratings).is_dir():
            problems.append(f"preference.ratings: {_where(ratings)} is a folder, not a ratings table")
        elif not Path(ratings).is_file():
            problems.append(f"preference.ratings: no such file {_where(ratings)}")
        else:
            try:
                load_ratings(ratings)
            except ValueError as e:
                problems.append(f"preference.ratings: {' '.join(str(e).split())}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("invalid inputs:\n" + "\n".join(f"  {p}" for p in problems))


def config_sha256(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys, no whitespace)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# typed view


@dataclass(frozen=True, slots=True)
class Sampling:
    """Settings of one decoding mode; `temperature == 0` means greedy (argmax)."""

    temperature: float
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


@dataclass(frozen=True, slots=True)
class Decoding:
    """Result-defining decoding settings (method.md section 3)."""

    temperature: float
    top_p: float
    top_k: int
    n_samples: int
    thinking_budget: int
    answer_max_tokens: int
    max_model_len: int
    seed: int
    thinking_budget_mode: str = "fixed"
    answer_lead_in: str = ""
    discard_after_close: bool = False
    max_input_tokens: int | None = None  # the rendered prompt must fit (II: 4096), else fail loudly

    def thinking_max_tokens(self, prompt_tokens: int) -> int:
        """The thinking phase's budget; under prompt_plus it grows with the prompt (the original
        MedCalc runs: min(max_len, P + budget), clipped to the context by the engine)."""
        if self.thinking_budget_mode == "prompt_plus":
            return min(self.max_model_len, prompt_tokens + self.thinking_budget)
        return self.thinking_budget

    def sampled(self, override: dict | None = None) -> Sampling:
        o = override or {}
        return Sampling(
            temperature=o.get("temperature", self.temperature),
            top_p=o.get("top_p", self.top_p),
            top_k=o.get("top_k", self.top_k),
        )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    family: str
    repo_id: str | None = None
    revision: str = "main"
    path: str | None = None
    toy: tuple[tuple[str, Any], ...] | None = None
    post_training: str = "unknown"
    evaluator: bool = True  # False: a CoT source only (no transfer job, in no evaluator pair)
    tensor_parallel_size: int = 1
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    reasoning_effort: str = "low"
    conversation_date: str = "2025-06-28"
    sampling_override: tuple[tuple[str, Any], ...] = ()
    device: str | None = None  # where its jobs run (gpu/cpu); None: cpu for toy models, else gpu
    params_b: float | None = None  # size in billions of parameters (job memory); None: from its name

    @property
    def source(self) -> str:
        return "hub" if self.repo_id else ("toy" if self.toy is not None else "local")

    def prompt_kwargs(self) -> dict:
        """Format arguments of this model's prompts (harmony: effort and pinned date)."""
        if self.family == "harmony":
            return {"reasoning_effort": self.reasoning_effort, "conversation_date": self.conversation_date}
        return {}

    @property
    def toy_params(self) -> dict:
        return dict(self.toy or ())

    def params(self) -> dict:
        """Result-defining identity of the model (for rule params and provenance)."""
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision if self.repo_id else None,
            "path": self.path,
            "toy": self.toy_params or None,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "reasoning_effort": self.reasoning_effort if self.family == "harmony" else None,
            "conversation_date": self.conversation_date if self.family == "harmony" else None,
            "sampling_override": dict(self.sampling_override) or None,
        }


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    name: str
    adapter: str
    repo_id: str | None = None
    revision: str = "main"
    split: str = "test"
    path: str | None = None
    n_items: int | None = None
    seed: int = 42
    options: tuple[tuple[str, Any], ...] = ()
    decoding: tuple[tuple[str, Any], ...] = ()

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def params(self) -> dict:
        d = asdict(self)
        d["options"] = self.opts
        d["decoding"] = dict(self.decoding)
        return d


# method.md 1.4: each switch, where it acts, and what the original study did (its `paper` value).
# Every switch defaults to the corrected behaviour; `compat: paper` sets them all.
COMPAT_SWITCHES = {
    "answer_scope": ("score", "parse the last match anywhere in prompt + thinking + answer"),
    "oss_format": ("prefill", "MedCalc: OSS reads a prefilled CoT as the literal words "
                              "`assistantanalysis` ... `assistantfinal`, without channel tokens"),
    "dedupe_open": ("prompt", "the opener is appended even when the template already opened the "
                              "thinking section (QwQ receives `<think>\\n<think>`)"),
    "collapse_ws": ("cots", "every whitespace run of a CoT collapsed to one space before it is "
                            "stored and transferred"),
    "oss_effort_transfer_eval": ("prefill", "OSS as the evaluator of MedCalc transfer runs uses "
                                            "reasoning effort medium"),
    "ii_source_cot_parse": ("prefill", "Instruction Induction: a transferred full CoT is the source's "
                                       "decoded output cut at the target's close marker, or all of it"),
    "ensemble_scoring": ("ensemble", "candidates ranked by the perplexity of context + candidate "
                                     "(every ensemble's `scoring:` becomes paper)"),
    "ensemble_stop": ("ensemble", "a thought ends only on `</think>` (a think-family generator's "
                                  "close marker), not on any generator's"),
    "ensemble_seed": ("ensemble", "every step samples from the same seed (the global seed), not "
                                  "a seed derived per step"),
    "fig1_pooling": ("figures", "the overview figure pools full and stripped CoTs"),
    "breakdown_grouping": ("figures", "the breakdown figure draws 'different answers, both correct' "
                                      "(tolerance agreement) among the inconsistent categories"),
    "preference_modes": ("config", "the preference correlation may mix answer modes across sources "
                                   "(the original: stripped Transfer, full-text Ensembles)"),
    "selfcons_default_source": ("metrics", "self-consistency compares with the A->A full transfer "
                                           "run instead of the free-run default"),
}


@dataclass(frozen=True, slots=True)
class Compat:
    """Which of method.md 1.4's switches reproduce the original study (`paper`) instead of the
    corrected behaviour. Config: `compat: paper` (all), `compat: corrected` (none, the default),
    or a mapping of switch names to `paper`/`corrected`. The consistency rule needs no switch:
    both definitions are always reported."""

    paper: frozenset = frozenset()

    @classmethod
    def from_config(cls, value) -> "Compat":
        if value in (None, "corrected"):
            return cls()
        if value == "paper":
            return cls(frozenset(COMPAT_SWITCHES))
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(COMPAT_SWITCHES))
            if unknown:
                raise ConfigError(f"compat: unknown switch(es) {unknown}; known: {sorted(COMPAT_SWITCHES)}")
            return cls(frozenset(k for k, v in value.items() if v == "paper"))
        raise ConfigError(f"compat: expected paper, corrected or a mapping of switches, got {value!r}")

    def __getattr__(self, name: str) -> bool:
        if name in COMPAT_SWITCHES:
            return name in self.paper
        raise AttributeError(name)

    def params(self, where: str | None = None) -> dict[str, str]:
        """Every switch (or those acting in `where`) as `paper`/`corrected`: for rule params and
        provenance, so that flipping a switch re-runs exactly the stages it changes."""
        return {k: ("paper" if k in self.paper else "corrected") for k, (w, _) in COMPAT_SWITCHES.items()
                if where is None or w == where}


@dataclass(frozen=True, slots=True)
class EnsembleSpec:
    name: str
    generators: tuple[str, ...]
    evaluators: tuple[str, ...]
    candidates: int = 3
    chunk_tokens: int = 15
    max_steps: int = 1000
    thinking_cap: int = 4096
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    truncation: str = "sentence"
    scoring: str = "candidate"

    @property
    def members(self) -> tuple[str, ...]:
        """Every model the ensemble job must hold at once (generators first, no repeats)."""
        return tuple(dict.fromkeys(self.generators + self.evaluators))

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PreferenceSource:
    """Where a rated explanation came from: one pipeline group (method.md section 8.2)."""

    label: str
    condition: str  # transfer | ensemble
    cot_source: str
    variant: str  # full | stripped: the answer mode the raters saw
    dataset: str

    def as_dict(self) -> dict:
        return {"condition": self.condition, "cot_source": self.cot_source,
                "variant": self.variant, "dataset": self.dataset}


@dataclass(frozen=True, slots=True)
class PreferenceSpec:
    """The optional `preference:` key: a ratings table and its source labels' pipeline groups."""

    ratings: str
    sources: tuple[PreferenceSource, ...]

    def source_map(self) -> dict[str, dict]:
        """`{label: {condition, cot_source, variant, dataset}}` in config order, as
        `cotransfer.preference.analyze(source_map=...)` takes it."""
        return {s.label: s.as_dict() for s in self.sources}


DEFAULT_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """Which part of a CoT transfers (docs/probe.md): prefix transfer (each model's greedy CoTs
    cut at sentence ends to `fractions` of their length, prefilled into every evaluator) and
    sentence importance (one sentence dropped at a time, on `importance_items` items; None: all),
    each answered `importance_samples` times (1: greedy, the transfer condition's decoding; more:
    the sampled condition's)."""

    prefix: bool = True
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    importance: bool = True
    importance_items: int | None = 20
    importance_samples: int = 1

    @property
    def enabled(self) -> bool:
        return self.prefix or self.importance

    @classmethod
    def from_config(cls, prefix: dict | None, importance: dict | None) -> "ProbeSpec":
        prefix, importance = prefix or {}, importance or {}
        fractions = tuple(float(f) for f in prefix.get("fractions", DEFAULT_FRACTIONS))
        if prefix.get("enabled", True):
            if any(not 0.0 <= f <= 1.0 for f in fractions):
                raise ConfigError(f"prefix.fractions: every fraction must lie in [0, 1], got {list(fractions)}")
            if len(set(fractions)) != len(fractions) or list(fractions) != sorted(fractions):
                raise ConfigError(f"prefix.fractions: expected distinct fractions in increasing order, "
                                  f"got {list(fractions)}")
            if 1.0 not in fractions:
                raise ConfigError(f"prefix.fractions: must include 1.0 (the whole CoT: the transfer point is "
                                  f"measured against it), got {list(fractions)}")
        n = importance.get("n_items", 20)
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"importance.n_items: expected a positive integer or 'all', got {n!r}")
        samples = importance.get("samples", 1)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"importance.samples: expected a positive integer, got {samples!r}")
        return cls(prefix=bool(prefix.get("enabled", True)), fractions=fractions,
                   importance=bool(importance.get("enabled", True)),
                   importance_items=None if n == "all" else n, importance_samples=samples)

    def params(self) -> dict:
        """Result-defining part (the probe rule's params)."""
        return {"prefix": self.prefix and list(self.fractions),
                "importance": self.importance and {"n_items": self.importance_items,
                                                   "samples": self.importance_samples}}


@dataclass(frozen=True, slots=True)
class Study:
    name: str
    results: str
    resources: str
    models: dict[str, ModelSpec]
    aux_models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    ensembles: dict[str, EnsembleSpec]
    decoding: Decoding
    strip_method: str
    strip_model: str | None
    strip_joiner: str
    consistency_definition: str
    strip_mode: str = "index"  # strip.mode (method llm): index or rewrite
    metrics_bootstrap: int = 1000  # consistency.bootstrap: resamples over items per CI
    metrics_permutations: int = 1000  # consistency.permutations: per paired consistency test
    engine: dict = field(default_factory=dict)
    preference: PreferenceSpec | None = None
    compat: Compat = field(default_factory=Compat)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def _model(name: str, d: dict) -> ModelSpec:
        return ModelSpec(
            name=name,
            family=d["family"],
            repo_id=d.get("repo_id"),
            revision=d.get("revision", "main"),
            path=d.get("path"),
            toy=tuple(sorted(d["toy"].items())) if "toy" in d else None,
            post_training=d.get("post_training", "unknown"),
            evaluator=d.get("evaluator", True),
            tensor_parallel_size=d.get("tensor_parallel_size", 1),
            dtype=d.get("dtype", "bfloat16"),
            max_model_len=d.get("max_model_len"),
            reasoning_effort=d.get("reasoning_effort", "low"),
            conversation_date=d.get("conversation_date", "2025-06-28"),
            sampling_override=tuple(sorted((d.get("decoding") or {}).items())),
            device=d.get("device"),
            params_b=d.get("params_b"),
        )

    @staticmethod
    def _preference(c: dict, models: dict, ensembles: dict, datasets: dict,
                    compat: "Compat") -> PreferenceSpec | None:
        p = c.get("preference")
        if p is None:
            return None
        sources = []
        for label, v in p["sources"].items():
            at = f"preference.sources.{label}"
            if v["dataset"] not in datasets:
                raise ConfigError(f"{at}.dataset: unknown dataset {v['dataset']!r}; known: {sorted(datasets)}")
            pool, what, a = ((models, "model", "a") if v["condition"] == "transfer"
                             else (ensembles, "ensemble", "an"))
            if v["cot_source"] not in pool:
                raise ConfigError(
                    f"{at}.cot_source: {v['cot_source']!r} is not {a} {what} (condition "
                    f"{v['condition']} reads {what} CoTs); known: {sorted(pool)}"
                )
            sources.append(PreferenceSource(label=label, condition=v["condition"],
                                            cot_source=v["cot_source"], variant=v["variant"],
                                            dataset=v["dataset"]))
        modes = sorted({s.variant for s in sources})
        if len(modes) > 1 and not compat.preference_modes:
            raise ConfigError(
                f"preference.sources: the rated sources mix answer modes ({', '.join(modes)}), so their "
                "ratings would be correlated with consistencies of different kinds; use one variant, or "
                "set compat.preference_modes: paper to reproduce the original's mix")
        return PreferenceSpec(ratings=p["ratings"], sources=tuple(sources))

    @classmethod
    def from_dict(cls, c: dict) -> "Study":
        absent = sorted(k for k, v in c["models"].items()
                        if v.get("optional") and v.get("path") and not Path(v["path"]).exists())
        for k in absent:
            log.warning("models.%s: optional model folder %s does not exist: left out of the study",
                        k, c["models"][k]["path"])
        models = {k: cls._model(k, v) for k, v in c["models"].items() if k not in absent}
        if not any(m.evaluator for m in models.values()):
            raise ConfigError("models: no evaluator (every model has evaluator: false)")
        aux = {k: cls._model(k, v) for k, v in (c.get("aux_models") or {}).items()}
        clash = sorted(set(models) & set(aux))
        if clash:
            raise ConfigError(f"aux_models: {', '.join(clash)} already defined under models")
        datasets = {
            k: DatasetSpec(
                name=k,
                adapter=v["adapter"],
                repo_id=v.get("repo_id"),
                revision=v.get("revision", "main"),
                split=v.get("split", "test"),
                path=v.get("path"),
                n_items=v.get("n_items"),
                seed=v.get("seed", 42),
                options=tuple(sorted((v.get("options") or {}).items())),
                decoding=tuple(sorted((v.get("decoding") or {}).items())),
            )
            for k, v in c["datasets"].items()
        }
        compat = Compat.from_config(c.get("compat"))
        ensembles = {}
        for k, v in (c.get("ensembles") or {}).items():
            if compat.ensemble_scoring:  # the original's scoring for every ensemble
                v = {**v, "scoring": "paper"}
            for role in ("generators", "evaluators"):
                unknown = [m for m in v[role] if m not in models]
                if unknown:
                    raise ConfigError(
                        f"ensembles.{k}.{role}: unknown model(s) {unknown}; known: {sorted(models)}"
                    )
            if k in models:
                raise ConfigError(f"ensembles.{k}: name clashes with a model (both are CoT sources)")
            ensembles[k] = EnsembleSpec(
                name=k,
                generators=tuple(v["generators"]),
                evaluators=tuple(v["evaluators"]),
                **{f: v[f] for f in ("candidates", "chunk_tokens", "max_steps", "thinking_cap",
                                     "temperature", "top_p", "top_k", "truncation", "scoring") if f in v},
            )
        from cotransfer.datasets import ADAPTERS, get_adapter

        for k, d in datasets.items():
            try:
                get_adapter(d.adapter)
            except KeyError:
                raise ConfigError(
                    f"datasets.{k}.adapter: unknown adapter {d.adapter!r}; known: {sorted(ADAPTERS)}"
                ) from None
        dec = c.get("decoding") or {}
        strip = c.get("strip") or {}
        method = strip.get("method", "rule")
        strip_model = strip.get("model")
        if method == "llm":
            if not strip_model:
                raise ConfigError("strip.model: required when strip.method is llm")
            if strip_model not in models and strip_model not in aux:
                raise ConfigError(
                    f"strip.model: unknown model {strip_model!r}; "
                    f"known: {sorted(models) + sorted(aux)}"
                )
        study = c["study"]
        return cls(
            name=study["name"],
            results=study.get("results", "results"),
            resources=study.get("resources", "resources"),
            models=models,
            aux_models=aux,
            datasets=datasets,
            ensembles=ensembles,
            decoding=Decoding(
                temperature=dec.get("temperature", 1.0),
                top_p=dec.get("top_p", 1.0),
                top_k=dec.get("top_k", -1),
                n_samples=dec.get("n_samples", 1),
                thinking_budget=dec.get("thinking_budget", 4096),
                answer_max_tokens=dec.get("answer_max_tokens", 1024),
                max_model_len=dec.get("max_model_len", 32768),
                seed=dec.get("seed", 42),
                thinking_budget_mode=dec.get("thinking_budget_mode", "fixed"),
                answer_lead_in=dec.get("answer_lead_in", ""),
                discard_after_close=dec.get("discard_after_close", False),
            ),
            strip_method=method,
            strip_model=strip_model,
            strip_joiner=strip.get("joiner", " "),
            strip_mode=strip.get("mode", "index"),
            consistency_definition=(c.get("consistency") or {}).get("definition", "paper"),
            metrics_bootstrap=int((c.get("consistency") or {}).get("bootstrap", 1000)),
            metrics_permutations=int((c.get("consistency") or {}).get("permutations", 1000)),
            engine=dict(c.get("engine") or {}),
            preference=cls._preference(c, models, ensembles, datasets, compat),
            compat=compat,
            probe=ProbeSpec.from_config(c.get("prefix"), c.get("importance")),
            raw=c,
        )

    # -- lookups ------------------------------------------------------------------------------

    def model(self, name: str) -> ModelSpec:
        if name in self.models:
            return self.models[name]
        if name in self.aux_models:
            return self.aux_models[name]
        raise KeyError(f"unknown model {name!r}; known: {sorted(self.models) + sorted(self.aux_models)}")

    @property
    def all_models(self) -> dict[str, ModelSpec]:
        return {**self.models, **self.aux_models}

    @property
    def evaluators(self) -> list[str]:
        """The models that read CoTs and answer (every model but the CoT sources only)."""
        return [m for m, spec in self.models.items() if spec.evaluator]

    @property
    def cot_sources(self) -> list[str]:
        """Every CoT source of the transfer stage: each model, then each ensemble."""
        return list(self.models) + list(self.ensembles)

    def prompt_kwargs(self, model: str, dataset: str | None = None, condition: str | None = None) -> dict:
        """Format arguments of `model`'s prompts in `dataset` under `condition`: its own
        (harmony: effort and pinned date) and the compat switches that change prompts."""
        spec = self.model(model)
        kw = spec.prompt_kwargs()
        if self.compat.dedupe_open:
            kw["dedupe_open"] = False
        if (self.compat.oss_effort_transfer_eval and spec.family == "harmony" and condition == "transfer"
                and dataset is not None and self.datasets[dataset].adapter == "medcalc"):
            kw["reasoning_effort"] = "medium"
        return kw

    def literal_oss_prefill(self, model: str, dataset: str) -> bool:
        """`compat.oss_format`: MedCalc CoTs prefilled into OSS as plain words (method.md 2.1)."""
        return (self.compat.oss_format and self.model(model).family == "harmony"
                and self.datasets[dataset].adapter == "medcalc")

    def decoding_for(self, dataset: str) -> Decoding:
        """The top-level decoding with the dataset's own overrides applied."""
        from dataclasses import replace

        return replace(self.decoding, **dict(self.datasets[dataset].decoding))

    def sampling_for(self, model: str, condition: str) -> Sampling:
        if condition == "sampled":
            return self.decoding.sampled(dict(self.model(model).sampling_override))
        return GREEDY

    def max_model_len(self, model: str) -> int:
        return self.model(model).max_model_len or self.decoding.max_model_len
