"""Every kind of bad config key (docs/reliability.md): for every key the schema declares (every
section's keys, and a model's, a dataset's and an ensemble's), a value of the wrong type; for
every section, a key it does not have; and the values the schema cannot judge (cross
references, ranges, files). Each is refused before any job by `validate()`, naming the key, and
by `cotransfer validate` in one line on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from test_workflow import demo_config_abs  # noqa: E402

from cotransfer.cli import main  # noqa: E402
from cotransfer.config import SCHEMA_PATH, ConfigError, validate  # noqa: E402

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
MAPS = {"models": ("model", "toy_qwq"), "datasets": ("dataset", "toyarith"), "ensembles": ("ensemble", "qwq_dapo__opent")}
SKIP_SECTIONS = {"preference", "aux_models", "compat"}  # preference: its own tests; compat: a scalar or mapping


def _typed(spec: dict) -> bool:
    return any(k in spec for k in ("type", "enum", "const", "oneOf", "anyOf"))


def type_cases() -> list[tuple[str, list[str], object]]:
    """(id, key path, wrong value) for every typed key of the schema, and one unknown key per section."""
    cases = []
    for section, spec in SCHEMA["properties"].items():
        if section in SKIP_SECTIONS:
            continue
        if section in MAPS:
            kind, entry = MAPS[section]
            props, base = SCHEMA["$defs"][kind].get("properties", {}), [section, entry]
        else:
            props, base = spec.get("properties", {}), [section]
        for key, sub in props.items():
            if not _typed(sub):
                continue
            wrong = 7 if sub.get("type") == "object" else {"not": ["a", "value"]}
            cases.append((".".join([*base, key]), [*base, key], wrong))
        cases.append((".".join([*base, "no_such_key"]), [*base, "no_such_key"], 1))
    return cases


def _set(cfg: dict, path: list[str], value) -> None:
    node = cfg
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


#: the checks the schema cannot make: cross references, ranges, files (id, mutation, key named)
VALUE_CASES = [
    ("ensemble names an unknown model", lambda c: c["ensembles"]["qwq_dapo__opent"].update(generators=["ghost"]),
     "ensembles.qwq_dapo__opent.generators"),
    ("strip model unknown", lambda c: c["strip"].update(model="ghost"), "strip.model"),
    ("strip llm without a model", lambda c: c["strip"].pop("model"), "strip.model"),
    ("unknown adapter", lambda c: c["datasets"]["toyarith"].update(adapter="nope"), "datasets.toyarith.adapter"),
    ("unknown family", lambda c: c["models"]["toy_qwq"].update(family="llama"), "models.toy_qwq.family"),
    ("no items", lambda c: c["datasets"]["toyarith"].update(n_items=0), "datasets.toyarith.n_items"),
    ("more items than the dataset has", lambda c: c["datasets"]["toyarith"].update(n_items=100000),
     "datasets.toyarith.n_items"),
    ("no thinking budget", lambda c: c["decoding"].update(thinking_budget=0), "decoding.thinking_budget"),
    ("temperature below 0", lambda c: c["decoding"].update(temperature=-1), "decoding.temperature"),
    ("a model folder that does not exist", lambda c: c["models"]["toy_qwq"].update(path="/no/such/model"),
     "models.toy_qwq.path"),
    ("fractions without 1.0", lambda c: c["prefix"].update(fractions=[0, 0.5]), "prefix.fractions"),
    ("fractions out of order", lambda c: c["prefix"].update(fractions=[0.5, 0.2, 1.0]), "prefix.fractions"),
    ("a fraction above 1", lambda c: c["prefix"].update(fractions=[0, 1.5, 1.0]), "prefix.fractions"),
    ("importance n_items 0", lambda c: c["importance"].update(n_items=0), "importance.n_items"),
    ("importance samples 0", lambda c: c["importance"].update(samples=0), "importance.samples"),
    ("unknown compat switch", lambda c: c.update(compat={"no_such_switch": "paper"}), "compat"),
    ("compat neither paper nor corrected", lambda c: c.update(compat="sometimes"), "compat"),
    ("ensemble clashes with a model", lambda c: c["ensembles"].update(toy_qwq=c["ensembles"]["qwq_dapo__opent"]),
     "ensembles.toy_qwq"),
    ("no evaluator", lambda c: [m.update(evaluator=False) for m in c["models"].values()], "models"),
    ("missing study name", lambda c: c["study"].pop("name"), "study"),
    ("a ratings file that does not exist", lambda c: c.update(preference={
        "ratings": "/no/such/ratings.csv",
        "sources": {"A": {"condition": "transfer", "cot_source": "toy_qwq", "variant": "full", "dataset": "toyarith"}}}),
     "preference.ratings"),
]
CASES = [(cid, (lambda c, p=path, v=value: _set(c, p, v)), cid) for cid, path, value in type_cases()] + VALUE_CASES


def test_the_catalogue_covers_every_section():
    sections = {c[0].split(".")[0] for c in CASES}
    assert sections >= set(SCHEMA["properties"]) - SKIP_SECTIONS
    assert len(CASES) >= 100


@pytest.mark.parametrize("case, mutate, named", CASES, ids=[c[0] for c in CASES])
def test_a_bad_config_is_refused_naming_the_key(case, mutate, named, tmp_path, capsys):
    cfg = copy.deepcopy(demo_config_abs())
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate(copy.deepcopy(cfg))
    assert named in str(err.value), str(err.value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert code != 0 and "Traceback" not in out.err + out.out
    assert named in out.err + out.out


def test_reliability_page_quotes_the_suite():
    """docs/reliability.md states the suite's counts; they must be the suite's."""
    import test_corrupt
    import test_disk
    import test_kills

    from conftest import ROOT

    page = (ROOT / "docs/reliability.md").read_text()
    assert f"{test_kills.N_KILLS} kill points (seed {test_kills.SEED}" in page
    assert f"catalogue of {len(test_kills.CATALOGUE)}" in page
    assert f"{test_corrupt.N_CASES} inputs x {len(test_corrupt.CORRUPTIONS)} corruptions = " \
           f"{test_corrupt.N_CASES * len(test_corrupt.CORRUPTIONS)}" in page
    assert f"| {len(test_disk.WRITERS)} |" in page
    assert f"| {len(CASES)} |" in page and f"{len(VALUE_CASES)} checks the schema cannot make" in page
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"SIGKILL at {test_kills.N_KILLS} seeded points" in readme and f"{len(CASES)} bad configs" in readme
