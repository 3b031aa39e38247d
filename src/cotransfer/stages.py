"""One function per pipeline stage; `workflow/scripts/*.py` only unpack Snakemake's job object and
call these. Each stage reads its inputs, calls the library, and writes its outputs through
`cotransfer.io` (atomic, with provenance). Nothing here knows about Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import polars as pl

from cotransfer import faults, io
from cotransfer.config import Study

log = logging.getLogger("cotransfer")


def setup_logging(logfile: str | None = None) -> None:
    """Log to the job's log file (Snakemake `log:`) and to stderr, with timestamps."""
    # vLLM's own logging setup would close these handlers (and silence the job log); left
    # alone, its records propagate to them like ours.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def start_job(smk) -> None:
    """Set up a Snakemake job's logging and log what it runs with: the rule, its wildcards, the
    resources it was given (they grow with each attempt) and, on SLURM, the job id and the
    allocation's memory. Then arm the fault injection of the tests (`cotransfer.faults`)."""
    setup_logging(smk.log[0] if smk.log else None)
    wildcards = dict(smk.wildcards.items())
    wc = ", ".join(f"{k}={v}" for k, v in wildcards.items())
    res = {k: smk.resources.get(k) for k in ("mem_mb", "cpus_per_task", "gpu", "runtime")}
    given = " ".join(f"{k}={v}" for k, v in res.items() if v is not None)
    log.info("job %s (%s): resources %s%s", smk.rule, wc, given, _slurm_allocation())
    sys.excepthook = _log_failure
    faults.start(smk.rule, list(wildcards.values()), res["mem_mb"])


def _log_failure(kind, error, tb) -> None:
    """A job's uncaught error goes to its log too (one line first: it names the bad file or key),
    not only to Snakemake's stderr."""
    log.error("job failed: %s", error, exc_info=(kind, error, tb))
    logging.shutdown()


def _slurm_allocation() -> str:
    """What SLURM gave this job, as scontrol tells it (the job step's environment lacks it)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return ""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return (f"; SLURM job {job} on {fields.get('NodeList') or socket.gethostname()}"
            f" (partition {fields.get('Partition', '?')}, TRES {fields.get('TRES', '?')})")


def end_job() -> None:
    """End an inference job's process as soon as its outputs are written, where vLLM ran
    in-process (CPU): its teardown (process groups, static destructors) then takes ~2.5 s per
    job and changes nothing on disk. Elsewhere (GPU: the engine core is a child process) a
    normal exit lets vLLM stop its processes."""
    from cotransfer.engine import loaded_in_process

    if loaded_in_process():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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


def cache_dir(study: Study) -> str | None:
    """Where the request cache lives (`engine.cache_dir`, default `{resources}/cache`); None
    when `engine.cache` is off."""
    if not study.engine.get("cache", True):
        return None
    return study.engine.get("cache_dir") or f"{study.resources}/cache"


def load_engine(study: Study, model: str, manifest: str, prov: dict | None = None):
    """The engine of one model: its tokenizer now, its weights on the first cache miss."""
    from cotransfer.engine import Engine

    info = io.read_json(manifest, what=f"manifest of {model}")
    spec = study.model(model)
    e = study.engine
    weights = ({"repo_id": info.get("repo_id"), "resolved_revision": info.get("resolved_revision")}
               if info.get("resolved_revision") else {"weights_sha256": info.get("weights_sha256")})
    job = {k: (prov or {}).get(k) for k in ("rule", "wildcards", "slurm_job_id", "git")}
    return Engine(
        info["path"], dtype=spec.dtype, tensor_parallel_size=spec.tensor_parallel_size,
        max_model_len=study.max_model_len(model), seed=study.decoding.seed,
        enforce_eager=e.get("enforce_eager", False),
        gpu_memory_utilization=e.get("gpu_memory_utilization", 0.9),
        cpu_kvcache_gib=e.get("cpu_kvcache_gib", 1),
        cache_dir=cache_dir(study), weights=weights, name=model, prov={"job": job},
    ), info


def _record_models(prov: dict, loaded: dict[str, tuple[dict, object]]) -> None:
    """Record an inference job's models in `prov`, after its run (so with the load time):
    ``models[name]`` is the model's manifest with its engine settings, and ``hardware["engine"]``
    what the engines ran on (`engine.torch_hardware`, taken when a model loaded; the engines of
    one job share its process and devices), with ``loaded``, the models that loaded. It is None
    where no model loaded: every request of the job came from the request cache."""
    prov["models"] = {m: {**info, "engine": engine.settings} for m, (info, engine) in loaded.items()}
    ran = {m: engine.hardware for m, (_, engine) in loaded.items() if engine.hardware is not None}
    described = {**next(iter(ran.values())), "loaded": sorted(ran)} if ran else None
    prov["hardware"] = {**(prov.get("hardware") or {}), "engine": described}


def _inference_prov(engine, counts: dict | None = None) -> dict:
    """How an output's requests were served (cache hits, computed) and the job's engine totals."""
    return {"output": counts, "job": engine.stats.as_dict()}


def _output_prov(prov: dict, output: dict, inputs=None, **extra) -> dict:
    """The job's provenance narrowed to one of several outputs: which one it is, (if given) only
    the inputs it was built from, and stage-specific `extra` entries."""
    doc = {**prov, "output": output}
    if inputs is not None:
        keep = {str(p) for p in inputs if p}
        doc["inputs"] = {n: v for n, v in (prov.get("inputs") or {}).items() if v["path"] in keep}
    if extra:
        doc["extra"] = {**(prov.get("extra") or {}), **extra}
    return doc


def _write_outputs(result, outputs: dict[tuple, str], prov: dict, engine, inputs: dict[tuple, list[str]] | None = None) -> None:
    """One table per output of a pooled run, each with its own provenance: the cell it holds,
    how its requests were served, and (if given) only the inputs it was built from."""
    for key, path in outputs.items():
        doc = _output_prov(prov, dict(zip(("condition", "variant", "cot_source"), key)),
                           inputs[key] if inputs is not None else None,
                           inference=_inference_prov(engine, result.counts[key]))
        io.write_parquet(result.frames[key], path, doc)


# --------------------------------------------------------------------------------------------
# inference


def generate(study: Study, dataset: str, model: str, items_path: str, manifest: str,
             out: dict[str, str], prov: dict) -> None:
    """Free runs of one model on one dataset: empty, default (greedy) and sampled, pooled in one
    run (one batched call per phase and shard).

    `out` keys: empty, default, sampled (generation tables) and cot_default, cot_sampled (CoT tables).
    """
    from cotransfer.config import GREEDY
    from cotransfer.inference import Job, cots_from_generations, free_units, items_list, prefill_units, run

    items = items_list(io.read_table(items_path))
    engine, info = load_engine(study, model, manifest, prov)
    job = Job(study, dataset, model, engine)
    sampled = study.sampling_for(model, "sampled")
    prov["decoding"] = {"decoding": asdict(study.decoding_for(dataset)), "greedy": asdict(GREEDY),
                        "sampled": asdict(sampled)}
    units = (prefill_units(job, items, None, condition="empty", variant=None, cot_source=None)
             + free_units(job, items, "default", GREEDY, 1)
             + free_units(job, items, "sampled", sampled, study.decoding.n_samples))
    result = run(job, units, shard_size=study.engine.get("shard_size"), what=f"generate {dataset}/{model}")
    keys = {"empty": ("empty", None, None), "default": ("default", "full", None), "sampled": ("sampled", "full", None)}
    _record_models(prov, {model: (info, engine)})
    _write_outputs(result, {keys[c]: out[c] for c in keys}, prov, engine)
    cot_prov = {**prov, "extra": {**(prov.get("extra") or {}), "inference": _inference_prov(engine)}}
    kw = {"collapse": study.compat.collapse_ws, "fmt": job.fmt}
    io.write_parquet(cots_from_generations(result[keys["default"]], model, **kw), out["cot_default"], cot_prov)
    io.write_parquet(cots_from_generations(result[keys["sampled"]], model, **kw), out["cot_sampled"], cot_prov)


def prefill(study: Study, dataset: str, evaluator: str, stage: str, items_path: str, manifest: str,
            declared: list[str], prov: dict) -> None:
    """All of an evaluator's prefilled work of one stage (`plan.prefill_cells`) in one run: the
    stripped self-prefill of default and sampled and every model's CoT (stage `transfer`), or
    every ensemble's CoT (stage `ensemble`). One table per cell; `declared` (the rule's outputs)
    must be exactly the cells' paths."""
    from cotransfer import plan
    from cotransfer.inference import Job, items_list, paper_source_cots, prefill_units, run

    R = study.results
    cells = plan.prefill_cells(study, stage)
    paths = {c.output_key: c.output(R, dataset, evaluator) for c in cells}
    _check_declared(f"prefill {stage}", list(paths.values()), declared)
    items = items_list(io.read_table(items_path))
    engine, info = load_engine(study, evaluator, manifest, prov)
    job = Job(study, dataset, evaluator, engine)
    prov["decoding"] = {"decoding": asdict(study.decoding_for(dataset)),
                        "answer_phase": {c: asdict(study.sampling_for(evaluator, c))
                                         for c in dict.fromkeys(cell.condition for cell in cells)}}
    units = []
    paper_ii = study.compat.ii_source_cot_parse and study.datasets[dataset].adapter == "instruction_induction"
    for c in cells:
        cots = io.read_table(c.cots(R, dataset, evaluator))
        if paper_ii and c.condition == "transfer" and c.variant == "full":
            cots = paper_source_cots(cots, job.fmt)
        units += prefill_units(job, items, cots, condition=c.condition, variant=c.variant,
                               cot_source=c.cot_source, sampling=study.sampling_for(evaluator, c.condition))
    result = run(job, units, shard_size=study.engine.get("shard_size"), what=f"{stage} {dataset}/{evaluator}")
    _record_models(prov, {evaluator: (info, engine)})
    inputs = {c.output_key: [items_path, manifest, c.cots(R, dataset, evaluator)] for c in cells}
    _write_outputs(result, paths, prov, engine, inputs)


def probe(study: Study, dataset: str, evaluator: str, items_path: str, manifest: str, declared: list[str],
          prov: dict, transfer: list[str] | None = None) -> None:
    """Which part of every model's greedy CoT carries it to the evaluator (docs/probe.md), in one
    run: each CoT cut at sentence ends to `prefix.fractions` of its length (condition `prefix`),
    and, on `importance.n_items` items, the whole CoT and the CoT without each sentence in turn
    (condition `drop_one`). Prompts and prefill are the transfer condition's, so its whole-CoT
    requests (fraction 1.0, `dropped` -1 when greedy) and the empty condition's (fraction 0) come
    from the request cache. One table per (condition, source) (`plan.prefill_cells`)."""
    from cotransfer import plan
    from cotransfer import probe as P
    from cotransfer.inference import Job, items_list, prefill_units, run

    R = study.results
    spec = study.probe
    cells = plan.prefill_cells(study, "probe")
    paths = {c.output_key: c.output(R, dataset, evaluator) for c in cells}
    _check_declared("probe", list(paths.values()), declared)
    items = items_list(io.read_table(items_path))
    subset = set(P.importance_items([it["item_id"] for it in items], spec.importance_items, study.decoding.seed))
    engine, info = load_engine(study, evaluator, manifest, prov)
    job = Job(study, dataset, evaluator, engine)
    as_transfer = study.sampling_for(evaluator, "transfer")
    drop = as_transfer if spec.importance_samples == 1 else study.sampling_for(evaluator, "sampled")
    prov["decoding"] = {"decoding": asdict(study.decoding_for(dataset)), "answer_phase": {
        "prefix": asdict(as_transfer), "drop_one": asdict(drop)}}
    prov.setdefault("extra", {})["probe"] = {**spec.params(), "importance_item_ids": sorted(subset)}
    units, inputs = [], {}
    for c in cells:
        sentences = plan.sentences_path(R, dataset, c.source, "default")
        cots = io.read_table(c.cots(R, dataset, evaluator))
        spans = P.spans_by_cot(io.read_table(sentences))
        inputs[c.output_key] = [items_path, manifest, c.cots(R, dataset, evaluator), sentences]
        if c.condition == "prefix":
            units += prefill_units(job, items, P.prefix_cots(cots, spans, spec.fractions), condition="prefix",
                                   variant=c.variant, cot_source=c.source, sampling=as_transfer,
                                   prompt_condition="transfer")
        else:
            units += prefill_units(job, [it for it in items if it["item_id"] in subset],
                                   P.drop_one_cots(cots, spans, sorted(subset), spec.importance_samples),
                                   condition="drop_one", variant=c.variant, cot_source=c.source, sampling=drop,
                                   prompt_condition="transfer")
    result = run(job, units, shard_size=study.engine.get("shard_size"), what=f"probe {dataset}/{evaluator}")
    for c in cells:  # the cost of each probe: requests, prefilled CoT tokens, answer tokens
        df = result[c.output_key]
        log.info("probe %s/%s: %s of %s: %d requests (%d cached, %d computed), %d CoT tokens prefilled, "
                 "%d answer tokens", dataset, evaluator, c.condition, c.source, df.height,
                 result.counts[c.output_key]["cached"], result.counts[c.output_key]["computed"],
                 df["thinking_tokens"].sum(), df["answer_tokens"].sum())
    prov["extra"]["probe"]["whole_cot_check"] = _check_whole_cot(result, cells, transfer or [])
    _record_models(prov, {evaluator: (info, engine)})
    _write_outputs(result, paths, prov, engine, inputs)


def _check_whole_cot(result, cells, transfer: list[str]) -> dict:
    """The probes' whole-CoT rows (fraction 1.0; the whole CoT of a greedy drop-one set) are the
    transfer condition's requests: their answers must be the transfer job's. Counts the rows
    compared and those that differ (logged: a nondeterministic engine, or a compat switch that
    changes the transfer condition's CoTs, e.g. ii_source_cot_parse)."""
    from cotransfer.probe import FULL

    if not transfer:
        return {"compared": 0, "differ": 0}
    keys = ["item_id", "sample", "cot_source"]
    ref = pl.concat([io.read_table(p, columns=[*keys, "thinking", "answer_text"]) for p in transfer])
    compared = differ = 0
    for c in cells:
        df = result[c.output_key]
        whole = df.filter(pl.col("fraction") == 1.0) if c.condition == "prefix" else df.filter(
            (pl.col("dropped") == FULL) & (pl.col("seed").is_null()))
        both = whole.select(*keys, "thinking", "answer_text").join(ref, on=keys, suffix="_transfer")
        bad = both.filter(pl.col("thinking").ne_missing(pl.col("thinking_transfer"))
                          | pl.col("answer_text").ne_missing(pl.col("answer_text_transfer")))
        compared, differ = compared + both.height, differ + bad.height
        if bad.height:
            log.warning("probe: %d of %d whole-CoT %s rows of %s differ from the transfer condition's answers "
                        "(e.g. item %s)", bad.height, both.height, c.condition, c.source, bad["item_id"][0])
    log.info("probe: %d whole-CoT rows compared with the transfer condition's answers: %d differ", compared, differ)
    return {"compared": compared, "differ": differ}


def ensemble(study: Study, dataset: str, name: str, items_path: str, manifests: dict[str, str],
             out_cots: str, out_steps: str, prov: dict) -> None:
    from cotransfer import ensemble as ens
    from cotransfer.inference import items_list

    spec = study.ensembles[name]
    items = items_list(io.read_table(items_path))
    engines, infos = {}, {}
    for m in spec.members:  # every member resident at once, each loaded at most once
        engines[m], infos[m] = load_engine(study, m, manifests[m], prov)
    prov["decoding"] = {"ensemble": spec.params(), "seed": study.decoding.seed}
    step_log = ens.step_log_dir(out_steps)
    rows, steps = ens.run(study, dataset, spec, items, engines, step_log=step_log)
    _record_models(prov, {m: (infos[m], engines[m]) for m in spec.members})
    prov.setdefault("extra", {})["inference"] = {m: engines[m].stats.as_dict() for m in spec.members}
    io.write_parquet(steps, out_steps, prov)
    io.write_parquet(rows, out_cots, prov)
    shutil.rmtree(step_log, ignore_errors=True)  # the outputs hold everything it recorded


# --------------------------------------------------------------------------------------------
# CPU stages


def split(study: Study, dataset: str, group: str, declared: list[str], prov: dict) -> None:
    """Every CoT table of one group (`plan.cot_tables`) into sentences with character offsets."""
    from cotransfer import plan
    from cotransfer.sentences import SPLITTER_VERSION
    from cotransfer.sentences import split as split_text

    R = study.results
    tables = plan.cot_tables(study, group)
    _check_declared(f"split {group}", [t.sentences(R, dataset) for t in tables], declared)
    schema = {"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64, "cot_source": pl.String,
              "sentence_idx": pl.Int64, "char_start": pl.Int64, "char_end": pl.Int64, "text": pl.String}
    prov.setdefault("extra", {})["splitter_version"] = SPLITTER_VERSION
    for t in tables:
        rows = []
        for r in io.read_table(t.cots(R, dataset)).iter_rows(named=True):
            for s in split_text(r["cot"] or ""):
                rows.append({"dataset": r["dataset"], "item_id": r["item_id"], "sample": r["sample"],
                             "cot_source": r["cot_source"], "sentence_idx": s.index,
                             "char_start": s.start, "char_end": s.end, "text": s.text})
        doc = _output_prov(prov, {"source": t.source, "kind": t.kind}, [t.cots(R, dataset)])
        io.write_parquet(pl.DataFrame(rows, schema=schema), t.sentences(R, dataset), doc)


def _check_declared(what: str, paths: list[str], declared: list[str]) -> None:
    """The files a stage writes must be exactly the outputs its rule declares (both come from
    `cotransfer.plan`; a mismatch is a bug, caught before any work)."""
    if sorted(paths) != sorted(map(str, declared)):
        diff = sorted(set(map(str, declared)) ^ set(paths))
        raise RuntimeError(f"{what}: the rule's outputs do not match cotransfer.plan: {diff[:4]}")


def strip(study: Study, dataset: str, group: str, items_path: str, declared: list[str], prov: dict,
          manifest: str | None = None) -> None:
    """Answer removal on the split stage's sentences for every CoT table of one group
    (`plan.cot_tables`): each stripped CoT is an ordered subset of the original sentences.

    method `rule` drops sentences that state the source's own parsed answer (CPU);
    method `llm` asks the filter model which sentences state the answer (`strip.mode` index),
    or for the CoT without them (rewrite, mapped back to the original sentences), in one batched
    run over every table of the job, so the filter model loads at most once.
    """
    from cotransfer import plan
    from cotransfer import strip as S
    from cotransfer.datasets import get_adapter
    from cotransfer.scoring import score_generations
    from cotransfer.sentences import Sentence

    R = study.results
    tasks = plan.cot_tables(study, group)
    _check_declared(f"strip {group}", [t.stripped(R, dataset) for t in tasks], declared)
    items = io.read_table(items_path)
    prepared = []  # per task: (records, keys, spans, answers)
    for t in tasks:
        spans: dict[tuple[str, int], list[Sentence]] = {}
        for r in io.read_table(t.sentences(R, dataset)).sort("item_id", "sample", "sentence_idx").iter_rows(named=True):
            spans.setdefault((r["item_id"], r["sample"]), []).append(
                Sentence(r["sentence_idx"], r["char_start"], r["char_end"], r["text"]))
        answers: dict[tuple[str, int], str | None] = {}
        recs = list(io.read_table(t.cots(R, dataset)).iter_rows(named=True))
        if t.generations(R, dataset):  # the source's own parsed answer: what the rule method removes
            scored = score_generations(study.datasets[dataset], items, io.read_table(t.generations(R, dataset)))
            answers = {(i, s): a for i, s, a in scored.select("item_id", "sample", "answer").iter_rows()}
        elif get_adapter(study.datasets[dataset].adapter).numeric_answers:  # no answer phase (an ensemble)
            answers = {(r["item_id"], r["sample"]): S.stated_answer(r["cot"]) for r in recs}
        prepared.append((recs, [(r["item_id"], r["sample"]) for r in recs], spans, answers))
    engine = None
    if study.strip_method == "llm":
        engine, info = load_engine(study, study.strip_model, manifest, prov)
        flat = [spans.get(k, []) for _, keys, spans, _ in prepared for k in keys]
        cots = [r["cot"] or "" for recs, _, _, _ in prepared for r in recs]
        all_drops = iter(_filter_model_drops(study, engine, flat, cots))
        _record_models(prov, {study.strip_model: (info, engine)})
    prov.setdefault("extra", {}).update(strip_method=study.strip_method, strip_version=S.STRIP_VERSION,
                                        strip_mode=study.strip_mode if study.strip_method == "llm" else None)
    if engine is not None:
        prov["extra"]["inference"] = _inference_prov(engine)
    schema = {"dataset": pl.String, "item_id": pl.String, "sample": pl.Int64, "cot_source": pl.String,
              "cot": pl.String, "n_in": pl.Int64, "n_out": pl.Int64, "char_ratio": pl.Float64,
              "token_ratio": pl.Float64, "unmatched": pl.Int64, "status": pl.String,
              "answer_still_present": pl.Boolean}
    for t, (recs, keys, spans, answers) in zip(tasks, prepared):
        rows = []
        for r, k in zip(recs, keys):
            cot = r["cot"] or ""
            if engine is not None:
                drop, status, unmatched = next(all_drops)
                res = S.strip_with_drops(cot, drop, joiner=study.strip_joiner, answer=answers.get(k),
                                         status=status, sentences=spans.get(k, []))
            else:
                unmatched = None
                res = S.strip_rule(cot, answers.get(k), joiner=study.strip_joiner, sentences=spans.get(k, []))
            # token ratio in the filter model's tokens (no tokenizer is loaded for the rule method)
            token_ratio = (engine.count_tokens(res.text) / engine.count_tokens(cot)
                           if engine is not None and cot.strip() else None)
            rows.append({**{c: r[c] for c in ("dataset", "item_id", "sample", "cot_source")}, "cot": res.text,
                         "n_in": res.n_in, "n_out": res.n_out, "char_ratio": res.char_ratio,
                         "token_ratio": token_ratio, "unmatched": unmatched,
                         "status": res.status, "answer_still_present": res.answer_still_present})
        doc = _output_prov(prov, {"source": t.source, "kind": t.kind},
                           [items_path, manifest, t.cots(R, dataset), t.sentences(R, dataset), t.generations(R, dataset)])
        io.write_parquet(pl.DataFrame(rows, schema=schema), t.stripped(R, dataset), doc)


def _filter_model_drops(study: Study, engine, sentence_lists: list,
                        cots: list[str] | None = None) -> list[tuple[set[int], str, int | None]]:
    """The filter model (thinking closed empty) over every CoT, in shards of `engine.shard_size`
    (one batched call each, progress logged); only its new text is parsed: (drop set, status,
    unmatched reply sentences) per CoT. Index mode: a reply may be `strip.filter_reply_budget(n)`
    tokens long for n sentences; rewrite mode: the CoT's own length plus the same margin (both
    capped by the context)."""
    from cotransfer import strip as S
    from cotransfer.config import GREEDY
    from cotransfer.engine import Request
    from cotransfer.formats import get_format

    family = study.model(study.strip_model).family
    fmt = get_format(family)
    # the reply budget grows with the sentence count (the engine caps it by the context left)
    if study.strip_mode == "rewrite":
        if cots is None:
            raise ValueError("rewrite mode needs the CoTs' text")
        reqs = [Request(S.render_rewrite_prompt(engine.tokenizer, family, cot),
                        engine.count_tokens(cot) + S.FILTER_REPLY_MARGIN, GREEDY, stop=fmt.stops) for cot in cots]
    else:
        reqs = [Request(S.render_filter_prompt(engine.tokenizer, family, ss), S.filter_reply_budget(len(ss)), GREEDY,
                        stop=fmt.stops) for ss in sentence_lists]
    size = study.engine.get("shard_size") or max(len(reqs), 1)
    outs = []
    for k in range(0, len(reqs), size):
        outs += engine.generate(reqs[k:k + size], what=f"answer-removal filter, shard {k // size + 1}/"
                                                        f"{(len(reqs) + size - 1) // size}")
        faults.point("shard")
    if study.strip_mode == "rewrite":
        return [S.parse_rewrite_output(fmt.answer_text(o.text), ss) if ss else (set(), "empty_input", 0)
                for ss, o in zip(sentence_lists, outs)]
    return [(*S.parse_filter_output(fmt.answer_text(o.text), len(ss)), None) if ss else (set(), "empty_input", None)
            for ss, o in zip(sentence_lists, outs)]


def score(study: Study, dataset: str, items_path: str, generation_paths: list[str], out: str, prov: dict) -> None:
    from cotransfer.scoring import score_generations

    # probe tables (docs/probe.md) carry their own key columns; other rows get them as null
    gens = pl.concat([io.read_table(p) for p in generation_paths], how="diagonal")
    faults.point("read")
    scored = score_generations(study.datasets[dataset], io.read_table(items_path), gens,
                               answer_scope="paper" if study.compat.answer_scope else "answer")
    io.write_parquet(scored, out, prov)


def metric_tables(study: Study, answers, *, bootstrap: int, permutations: int, seed: int) -> dict[str, pl.DataFrame]:
    """`metrics.all_tables` with what the config knows: the ensembles' members, the models'
    post-training tags, and each Instruction Induction dataset's similarity backend (its
    consistency by similarity, method.md section 8.3). The aggregate rule and `cotransfer metrics
    --config` both call this."""
    from cotransfer import ii_metrics, metrics, plan
    from cotransfer.similarity import get_backend

    from cotransfer.probe import PROBE_CONDITIONS
    from cotransfer.probe_metrics import probe_tables

    ii = plan.ii_datasets(study)
    # the probes' rows and the sources' own answers they are compared with (docs/probe.md)
    probe_input = (answers.lazy().filter(pl.col("condition").is_in([*PROBE_CONDITIONS, "default"])).collect()
                   if study.probe.enabled else None)
    answers = answers.filter(~pl.col("condition").is_in(PROBE_CONDITIONS))  # the study's conditions
    # CoT sources that are not evaluators (method.md 2.2's base and GRPO models) answer only in
    # their own free runs: they are in no evaluator pair, but post-training compares each
    # target's answer with theirs.
    cot_only = [m for m, spec in study.models.items() if not spec.evaluator]
    main = answers.filter(~pl.col("evaluator").is_in(cot_only)) if cot_only else answers
    tags = {m: spec.post_training for m, spec in study.models.items()}
    per_task = []

    def ii_hook(lf, backend):  # the pair table for all_tables; the per-task one kept for F11
        pairs, tasks = ii_metrics.ii_consistency_tables(lf, backend)
        per_task.append(tasks)
        return pairs

    tables = metrics.all_tables(
        main, ensembles={e: (s.generators, s.evaluators) for e, s in study.ensembles.items()},
        tags=tags, bootstrap=bootstrap, permutations=permutations, seed=seed,
        similarity={d: get_backend(study.datasets[d].opts, where=f"datasets.{d}.options") for d in ii} or None,
        ii_consistency=ii_hook if ii else None, ii_datasets=ii)
    if ii:
        tables["ii_task_consistency"] = pl.concat(per_task)
        tables["ii_task_accuracy"] = ii_metrics.ii_task_accuracy(main.filter(pl.col("dataset").is_in(ii)))
    if cot_only:
        tables["post_training"] = metrics.post_training(answers, tags, accuracy_table=tables["accuracy"])
    if study.compat.selfcons_default_source:  # the original's default side: the A->A transfer run
        tables["self_consistency"] = metrics.self_consistency(metrics.paper_default_source(main), bootstrap, seed)
    if study.probe.enabled:
        tables.update(probe_tables(probe_input, bootstrap=bootstrap, seed=seed))
    return tables


def aggregate(study: Study, scored_paths: list[str], out: dict[str, str], prov: dict) -> None:
    """The answers table and every metric table (`metrics.all_tables`, method.md section 8), plus
    CSV copies of the condition summary and accuracy for the report."""
    from cotransfer import plan
    from cotransfer.scoring import ANSWER_COLUMNS

    from cotransfer.probe import PROBE_KEY_SCHEMA

    answers = pl.concat([io.read_table(p) for p in scored_paths], how="diagonal_relaxed")
    faults.point("read")
    answers = answers.with_columns(pl.lit(None, t).alias(c) for c, t in PROBE_KEY_SCHEMA.items()
                                   if c not in answers.columns)  # no probe rows in the study
    lacking = [c for c in ANSWER_COLUMNS if c not in answers.columns]
    if lacking:
        raise ValueError(f"the scored tables {scored_paths} lack the columns {lacking} (written by an older "
                         f"cotransfer): re-score them with `snakemake -R score`")
    answers = answers.select(ANSWER_COLUMNS + [c for c in answers.columns if c not in ANSWER_COLUMNS])
    io.write_parquet(answers, out["answers"], prov)
    tables = metric_tables(study, answers, bootstrap=study.metrics_bootstrap,
                           permutations=study.metrics_permutations, seed=study.decoding.seed)
    prov.setdefault("extra", {})["metrics"] = {"bootstrap": study.metrics_bootstrap,
                                              "permutations": study.metrics_permutations,
                                              "seed": study.decoding.seed}
    for name in plan.metric_tables(study):
        io.write_parquet(tables[name], out[name], prov)
    for name in ("consistency_summary", "accuracy"):  # what the report shows as tables
        io.write_text(out[f"{name}_csv"], tables[name].write_csv(float_precision=4))


def strip_report(study: Study, out_table: str, out_csv: str, prov: dict) -> None:
    """Answer removal's QC table (`metrics.strip_qc`) over every stripped CoT table of the study:
    the models' default and sampled CoTs and the ensembles'."""
    from cotransfer import metrics, plan

    R = study.results
    columns = ["dataset", "cot_source", "n_in", "n_out", "char_ratio", "token_ratio", "unmatched", "status",
               "answer_still_present"]
    parts = [metrics.strip_qc(io.read_table(t.stripped(R, d), columns=columns), t.kind)
             for d in study.datasets for group in plan.COT_GROUPS for t in plan.cot_tables(study, group)]
    table = pl.concat(parts) if parts else pl.DataFrame(schema=metrics.STRIP_QC_SCHEMA)
    io.write_parquet(table, out_table, prov)
    io.write_text(out_csv, table.write_csv(float_precision=3))


def preference(study: Study, summary: str, accuracy: str, out: dict[str, str], prov: dict) -> None:
    """The human-preference analysis (method.md section 8.2) of the configured ratings file."""
    from cotransfer import preference as P

    spec = study.preference
    tables = P.analyze(P.load_ratings(spec.ratings), io.read_table(summary), io.read_table(accuracy),
                       source_map=spec.source_map(), bootstrap=study.metrics_bootstrap, seed=study.decoding.seed)
    for name, df in tables.items():
        io.write_parquet(df, out[name], prov)


def ensemble_report(study: Study, out_table: str, prov: dict) -> None:
    """F12's table over every (dataset, ensemble): generator wins, step counts, stop reasons,
    answer removal's kept share (`metrics.ensemble_diagnostics`); the figures rule draws it."""
    from cotransfer import metrics, plan

    R = study.results
    parts = []
    for d in study.datasets:
        for e in study.ensembles:
            table = plan.CotTable(e, "ensemble")
            parts.append(metrics.ensemble_diagnostics(
                io.read_table(plan.ensemble_steps_path(R, d, e)), io.read_table(table.cots(R, d)),
                {e: study.ensembles[e].generators}, stripped=io.read_table(table.stripped(R, d))))
    diag = pl.concat(parts) if parts else pl.DataFrame(schema=metrics.ENSEMBLE_DIAGNOSTICS_SCHEMA)
    io.write_parquet(diag, out_table, prov)


def figures(study: Study, tables: dict[str, str], out_dir: str, declared: list[str]) -> None:
    """Every figure of method.md section 8.4 the tables support (`figures.render_all`), PNG and
    PDF, and figures/figures.json saying why any other is missing. Fails, naming the figures and
    the reasons, when a figure the rule declared (`plan.figures_planned`) could not be drawn."""
    from cotransfer import figures as F
    from cotransfer import plan

    frames = {name: io.read_table(path) for name, path in tables.items()}
    result = F.render_all(frames, out_dir, ii_datasets=plan.ii_datasets(study),
                          pool_variants=study.compat.fig1_pooling,
                          paper_grouping=study.compat.breakdown_grouping)
    written = {str(Path(p)) for v in result.values() if isinstance(v, list) for p in v}
    missing = sorted(p for p in declared if str(Path(p)) not in written)
    if missing:
        reasons = {fid: why for fid, why in result.items() if isinstance(why, str)}
        raise RuntimeError(f"figures: {len(missing)} declared figure files were not drawn ({missing[:6]}); "
                           f"reasons given: {reasons}")
