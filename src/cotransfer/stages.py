"""One function per pipeline stage; `workflow/scripts/*.py` only unpack Snakemake's job object and
call these. Each stage reads its inputs, calls the library, and writes its outputs through
`cotransfer.io` (atomic, with provenance). Nothing here knows about Snakemake.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import polars as pl

from cotransfer import io
from cotransfer.config import Study

log = logging.getLogger("cotransfer")


def setup_logging(logfile: str | None = None) -> None:
    """Log to the job's log file (Snakemake `log:`) and to stderr, with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------------------------
# data and models


def fetch_dataset(study: Study, dataset: str, dest: str) -> dict:
    from cotransfer.datasets import get_adapter

    spec = study.datasets[dataset]
    info = get_adapter(spec.adapter)(spec).fetch(Path(dest))
    io.write_json(Path(dest) / "fetch.json", {"dataset": dataset, **info})
    return info


def make_items(study: Study, dataset: str, raw: str | None, out: str, prov: dict) -> pl.DataFrame:
    from cotransfer.datasets import get_adapter

    spec = study.datasets[dataset]
    adapter = get_adapter(spec.adapter)(spec)
    items = adapter.load(Path(raw) if raw else None)
    fetched = {}
    if raw and (Path(raw) / "fetch.json").exists():
        fetched = json.loads((Path(raw) / "fetch.json").read_text())
    prov["datasets"] = {dataset: {**spec.params(), "adapter_version": adapter.version, **fetched}}
    io.write_parquet(items, out, prov)
    log.info("%s: %d items", dataset, items.height)
    return items


def prepare_model(study: Study, model: str, dest: str, manifest: str) -> dict:
    """Download (hub, pinned revision), build (toy) or check (local path) a model; record it.

    The manifest JSON holds the local path the inference jobs load offline, and for hub models
    the resolved commit sha of the snapshot.
    """
    spec = study.model(model)
    info: dict = {"model": model, **spec.params()}
    if spec.source == "hub":
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id=spec.repo_id, revision=spec.revision,
            allow_patterns=["*.safetensors", "*.json", "tokenizer*", "*.jinja", "*.model", "*.txt"],
        )
        info.update(path=path, resolved_revision=Path(path).name)
    elif spec.source == "toy":
        from cotransfer.toymodels import TOY_VERSION, build

        path = str(build(dest, spec.family, spec.toy_params))
        info.update(path=path, toy_version=TOY_VERSION, weights_sha256=io.sha256_path(path))
    else:
        path = spec.path
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"models.{model}.path: {path!r} is not a directory")
        info.update(path=str(Path(path).resolve()), weights_sha256=io.sha256_path(path))
    io.write_json(manifest, info)
    log.info("model %s ready at %s", model, info["path"])
    return info


def load_engine(study: Study, model: str, manifest: str):
    from cotransfer.engine import Engine

    info = json.loads(Path(manifest).read_text())
    spec = study.model(model)
    e = study.engine
    return Engine(
        info["path"], dtype=spec.dtype, tensor_parallel_size=spec.tensor_parallel_size,
        max_model_len=study.max_model_len(model), seed=study.decoding.seed,
        enforce_eager=e.get("enforce_eager", False),
        gpu_memory_utilization=e.get("gpu_memory_utilization", 0.9),
        cpu_kvcache_gib=e.get("cpu_kvcache_gib", 1),
    ), info


def parts_dir(out: str) -> Path:
    """Where an inference output keeps its finished shards until the merge."""
    return Path(f"{out}.parts")


def finish(df: pl.DataFrame, out: str, prov: dict) -> None:
    """Write the merged output atomically, then drop its shards."""
    io.write_parquet(df, out, prov)
    shutil.rmtree(parts_dir(out), ignore_errors=True)


def _model_prov(info: dict, engine) -> dict:
    return {**info, "engine": engine.settings}


# --------------------------------------------------------------------------------------------
# inference


def generate(study: Study, dataset: str, model: str, items_path: str, manifest: str,
             out: dict[str, str], prov: dict) -> None:
    """Free runs of one model on one dataset: empty, default (greedy) and sampled.

    `out` keys: empty, default, sampled (generation tables) and cot_default, cot_sampled (CoT tables).
    """
    from cotransfer.config import GREEDY
    from cotransfer.inference import Job, cots_from_generations, free_run, items_list, prefilled_run

    items = items_list(pl.read_parquet(items_path))
    engine, info = load_engine(study, model, manifest)
    job = Job(study, dataset, model, engine)
    sampled = study.sampling_for(model, "sampled")
    prov["models"] = {model: _model_prov(info, engine)}
    prov["decoding"] = {"decoding": asdict(study.decoding_for(dataset)), "greedy": asdict(GREEDY),
                        "sampled": asdict(sampled)}
    shards = {"shard_size": study.engine.get("shard_size", 256), "prov": prov}
    tables = {
        "empty": prefilled_run(job, items, None, condition="empty", variant=None, cot_source=None,
                               parts=parts_dir(out["empty"]), **shards),
        "default": free_run(job, items, "default", GREEDY, 1, parts=parts_dir(out["default"]), **shards),
        "sampled": free_run(job, items, "sampled", sampled, study.decoding.n_samples,
                            parts=parts_dir(out["sampled"]), **shards),
    }
    for cond, df in tables.items():
        finish(df, out[cond], prov)
    io.write_parquet(cots_from_generations(tables["default"], model), out["cot_default"], prov)
    io.write_parquet(cots_from_generations(tables["sampled"], model), out["cot_sampled"], prov)


def prefill(study: Study, dataset: str, evaluator: str, condition: str, variant: str, source: str,
            items_path: str, cots_path: str, manifest: str, out: str, prov: dict) -> None:
    """A given CoT prefilled into `evaluator`: transfer, ensemble, or the stripped self-prefill
    of the default and sampled conditions (`source` is then the evaluator itself)."""
    from cotransfer.inference import Job, items_list, prefilled_run

    items = items_list(pl.read_parquet(items_path))
    cots = pl.read_parquet(cots_path)
    engine, info = load_engine(study, evaluator, manifest)
    sampling = study.sampling_for(evaluator, condition)
    prov["models"] = {evaluator: _model_prov(info, engine)}
    prov["decoding"] = {"decoding": asdict(study.decoding_for(dataset)), "answer_phase": asdict(sampling)}
    cot_source = source if condition in ("transfer", "ensemble") else None
    df = prefilled_run(Job(study, dataset, evaluator, engine), items, cots, condition=condition,
                       variant=variant, cot_source=cot_source, sampling=sampling, parts=parts_dir(out),
                       shard_size=study.engine.get("shard_size", 256), prov=prov)
    finish(df, out, prov)


def ensemble(study: Study, dataset: str, name: str, items_path: str, manifests: dict[str, str],
             out_cots: str, out_steps: str, prov: dict) -> None:
    from cotransfer import ensemble as ens
    from cotransfer.inference import items_list

    spec = study.ensembles[name]
    items = items_list(pl.read_parquet(items_path))
    engines, infos = {}, {}
    for m in spec.members:  # every member resident at once, each loaded exactly once
        engines[m], infos[m] = load_engine(study, m, manifests[m])
    prov["models"] = {m: _model_prov(infos[m], engines[m]) for m in spec.members}
    prov["decoding"] = {"ensemble": spec.params(), "seed": study.decoding.seed}
    rows, steps = ens.run(study, dataset, spec, items, engines)
    io.write_parquet(steps, out_steps, prov)
    io.write_parquet(rows, out_cots, prov)


# --------------------------------------------------------------------------------------------
# CPU stages


def split(cots_path: str, out: str, prov: dict) -> None:
    from cotransfer.sentences import SPLITTER_VERSION
    from cotransfer.sentences import split as split_text

    cots = pl.read_parquet(cots_path)
    rows = []
    for r in cots.iter_rows(named=True):
        for s in split_text(r["cot"] or ""):
            rows.append({"dataset": r["dataset"], "item_id": r["item_id"], "sample": r["sample"],
                         "cot_source": r["cot_source"], "sentence_idx": s.index,
                         "char_start": s.start, "char_end": s.end, "text": s.text})
    schema = {"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64, "cot_source": pl.String,
              "sentence_idx": pl.Int64, "char_start": pl.Int64, "char_end": pl.Int64, "text": pl.String}
    prov.setdefault("extra", {})["splitter_version"] = SPLITTER_VERSION
    io.write_parquet(pl.DataFrame(rows, schema=schema), out, prov)


def strip(study: Study, dataset: str, cots_path: str, sentences_path: str, generations_path: str | None,
          items_path: str, out: str, prov: dict, manifest: str | None = None) -> None:
    """Answer removal on the split stage's sentences: the stripped CoT is an ordered subset of them.

    method `rule` drops sentences that state the source's own parsed answer (CPU);
    method `llm` asks the filter model which sentences state the answer (index mode).
    """
    from cotransfer import strip as S
    from cotransfer.scoring import score_generations
    from cotransfer.sentences import Sentence

    cots = pl.read_parquet(cots_path)
    spans: dict[tuple[str, int], list[Sentence]] = {}
    for r in pl.read_parquet(sentences_path).sort("item_id", "sample", "sentence_idx").iter_rows(named=True):
        spans.setdefault((r["item_id"], r["sample"]), []).append(
            Sentence(r["sentence_idx"], r["char_start"], r["char_end"], r["text"]))
    answers: dict[tuple[str, int], str | None] = {}
    if generations_path:  # the source's own parsed answer: what the rule method removes
        scored = score_generations(study.datasets[dataset], pl.read_parquet(items_path),
                                   pl.read_parquet(generations_path))
        answers = {(i, s): a for i, s, a in scored.select("item_id", "sample", "answer").iter_rows()}
    recs = list(cots.iter_rows(named=True))
    keys = [(r["item_id"], r["sample"]) for r in recs]
    cot_of = {k: r["cot"] or "" for k, r in zip(keys, recs)}
    if study.strip_method == "llm":
        engine, info = load_engine(study, study.strip_model, manifest)
        prov["models"] = {study.strip_model: _model_prov(info, engine)}
        drops = _filter_model_drops(study, engine, [spans.get(k, []) for k in keys])
        results = [S.strip_with_drops(cot_of[k], drop, joiner=study.strip_joiner, answer=answers.get(k),
                                      status=status, sentences=spans.get(k, []))
                   for k, (drop, status) in zip(keys, drops)]
    else:
        results = [S.strip_rule(cot_of[k], answers.get(k), joiner=study.strip_joiner, sentences=spans.get(k, []))
                   for k in keys]
    rows = []
    for r, res in zip(recs, results):
        rows.append({**{c: r[c] for c in ("dataset", "item_id", "sample", "cot_source")}, "cot": res.text,
                     "n_in": res.n_in, "n_out": res.n_out, "char_ratio": res.char_ratio,
                     "status": res.status, "answer_still_present": res.answer_still_present})
    prov.setdefault("extra", {}).update(strip_method=study.strip_method, strip_version=S.STRIP_VERSION)
    df = pl.DataFrame(rows, schema={"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64,
                                    "cot_source": pl.String, "cot": pl.String, "n_in": pl.Int64,
                                    "n_out": pl.Int64, "char_ratio": pl.Float64, "status": pl.String,
                                    "answer_still_present": pl.Boolean})
    io.write_parquet(df, out, prov)


def _filter_model_drops(study: Study, engine, sentence_lists: list) -> list[tuple[set[int], str]]:
    """One batched call of the filter model (thinking closed empty); its new text only is parsed."""
    from cotransfer import strip as S
    from cotransfer.config import GREEDY
    from cotransfer.engine import Request
    from cotransfer.formats import get_format

    fmt = get_format(study.model(study.strip_model).family)
    reqs = []
    for ss in sentence_lists:
        rendered = engine.tokenizer.apply_chat_template(S.filter_prompt(ss), tokenize=False,
                                                        add_generation_prompt=True)
        reqs.append(Request(fmt.empty(fmt.open(rendered)), 256, GREEDY, stop=fmt.stops))
    outs = engine.generate(reqs, what="answer-removal filter")
    return [S.parse_filter_output(fmt.answer_text(o.text), len(ss)) if ss else (set(), "empty_input")
            for ss, o in zip(sentence_lists, outs)]


def score(study: Study, dataset: str, items_path: str, generation_paths: list[str], out: str, prov: dict) -> None:
    from cotransfer.scoring import score_generations

    gens = pl.concat([pl.read_parquet(p) for p in generation_paths], how="vertical")
    scored = score_generations(study.datasets[dataset], pl.read_parquet(items_path), gens)
    io.write_parquet(scored, out, prov)


def aggregate(study: Study, scored_paths: list[str], out: dict[str, str], prov: dict) -> None:
    from cotransfer import metrics
    from cotransfer.scoring import ANSWER_COLUMNS

    answers = pl.concat([pl.read_parquet(p) for p in scored_paths], how="vertical")
    answers = answers.select(ANSWER_COLUMNS + [c for c in answers.columns if c not in ANSWER_COLUMNS])
    cons = pl.concat([metrics.consistency(answers, definition=d) for d in ("paper", "strict")])
    io.write_parquet(answers, out["answers"], prov)
    io.write_parquet(cons, out["consistency"], prov)
    io.write_parquet(metrics.condition_summary(cons), out["consistency_summary"], prov)
    io.write_parquet(metrics.accuracy(answers), out["accuracy"], prov)


def figures(study: Study, consistency: str, accuracy: str, out: dict[str, str]) -> None:
    from cotransfer import figures as F

    cons = pl.read_parquet(consistency).filter(pl.col("definition") == study.consistency_definition)
    F.consistency_heatmaps(cons, out["heatmap"])
    F.accuracy_chart(pl.read_parquet(accuracy), out["accuracy"])
    F.overview_bars(cons, out["overview"])

