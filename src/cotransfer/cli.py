"""The `cotransfer` command: audit lineage, compute consistency or every metric table, re-score,
show and trim the request cache, validate a config, train the demo's toy models.

Bad input (a missing, foreign, truncated or corrupt file, a table lacking columns, a config that
is not YAML or breaks the schema, a directory where a file belongs) is one line on stderr,
``cotransfer <command>: error: <file>: <what is wrong>``, and exit code 2 (`main`), never a
traceback; tables are read through `cotransfer.io.read_table`/`scan_table`, which name the file
and, for a pipeline file, the rule that writes it and how to make it again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CliError(Exception):
    """Bad input, already described: `main` prints it as one line and exits with `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _one_line(text: str) -> str:
    """A multi-line message (a ConfigError lists one bad key a line) as one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def _yaml_problem(e) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or _one_line(str(e)))


def _load_config(path):
    """The study of a config file; a missing, unreadable, non-YAML or invalid one is a
    ConfigError naming the file (one line)."""
    import yaml

    from cotransfer.config import ConfigError, load

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a config file")
    try:
        return load(p)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({_yaml_problem(e)})") from None
    except ConfigError as e:
        raise ConfigError(f"{p}: {_one_line(str(e))}") from None


def _input_error(e: BaseException) -> str | None:
    """One line for an exception that means bad input; None for anything else (a bug: let it
    show its traceback)."""
    if isinstance(e, CliError):
        return str(e)
    import yaml

    from cotransfer.config import ConfigError
    from cotransfer.io import TableError, _read_errors, _read_problem

    if isinstance(e, (TableError, ConfigError)):
        return _one_line(str(e))
    if isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        name = getattr(mark, "name", None)
        return f"{name + ': ' if name and not name.startswith('<') else ''}not valid YAML ({_yaml_problem(e)})"
    if isinstance(e, OSError):
        what = {FileNotFoundError: "no such file or directory", IsADirectoryError: "is a directory, not a file",
                NotADirectoryError: "a directory on its path is a file",
                PermissionError: "permission denied"}.get(type(e), e.strerror or _one_line(str(e)))
        return f"{e.filename}: {what}" if e.filename else _one_line(str(e)) or what
    if isinstance(e, _read_errors()):  # polars/pyarrow: read outside `io.reading`, the file unknown
        return f"a table could not be read: {_read_problem(e)}"
    return None


def cmd_audit(args) -> int:
    """A summary of FILE's lineage, then the lineage itself, every file once (`cotransfer.audit`)."""
    from cotransfer import audit, io

    path = Path(args.file)
    if not path.exists():
        raise io.TableError(path, "no such file")
    if path.is_dir():
        raise io.TableError(path, "is a directory, not a file")
    if path.suffix == ".parquet":  # a result file: its provenance must be readable
        with io.reading(path):
            io.read_provenance(path)
    lineage = audit.collect(path, verify=not args.no_verify)
    if args.json:
        print(json.dumps(audit.as_json(lineage), indent=2, sort_keys=True, default=str))
    else:
        sys.stdout.write(audit.render(lineage, full=args.full))
    return 0


def cmd_consistency(args) -> int:
    import polars as pl

    from cotransfer import io, metrics

    answers = io.read_table(args.answers, required=list(metrics.ANSWER_SCHEMA), what="answers table")
    with io.reading(args.answers, errors=(ValueError, pl.exceptions.PolarsError)):
        df = metrics.consistency(answers, definition=args.definition)
    io.write_parquet(df, args.output, io.provenance(rule="cli:consistency", inputs=[args.answers],
                                                    extra={"definition": args.definition}))
    print(f"{df.height} evaluator pairs -> {args.output}")
    return 0


def cmd_metrics(args) -> int:
    """Every metric table of an answers table (`metrics.all_tables`) as DIR/<table>.parquet."""
    import polars as pl

    from cotransfer import io, metrics

    path = Path(args.answers)
    answers = io.scan_table(path, required=list(metrics.ANSWER_SCHEMA), what="answers table")
    study = config = None
    if args.config:
        study = _load_config(args.config)
        config = study.raw
    with io.reading(path, errors=(ValueError, pl.exceptions.PolarsError)):  # collected here: name the file
        if study is not None:  # ensembles, post-training tags, Instruction Induction similarity
            from cotransfer.stages import metric_tables

            tables = metric_tables(study, answers, bootstrap=args.bootstrap,
                                   permutations=args.permutations, seed=args.seed)
        else:
            tables = metrics.all_tables(answers, bootstrap=args.bootstrap, seed=args.seed,
                                        permutations=args.permutations)
    inputs = {"answers": str(path), **({"config": str(args.config)} if args.config else {})}
    prov = io.provenance(rule="cli:metrics", config=config, inputs=inputs,
                         extra={"bootstrap": args.bootstrap, "seed": args.seed, "permutations": args.permutations})
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        io.write_parquet(df, out / f"{name}.parquet", prov)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True, float_precision=3):
        print(tables["consistency_summary"])
    print(f"{len(tables)} tables -> {out}/ ({', '.join(tables)})")
    return 0


def cmd_score(args) -> int:
    import polars as pl
    import pyarrow as pa
    import yaml

    from cotransfer import io
    from cotransfer.config import DatasetSpec
    from cotransfer.datasets import get_adapter
    from cotransfer.scoring import score_generations

    try:
        adapter_cls = get_adapter(args.kind)
    except KeyError as e:
        raise CliError(e.args[0]) from None
    options = []
    for kv in args.option:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise CliError(f"--option {kv!r} is not KEY=VALUE")
        try:
            options.append((key, yaml.safe_load(value)))  # numbers and lists as in a config file
        except yaml.YAMLError as e:
            raise CliError(f"--option {kv!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    spec = DatasetSpec(name=args.kind, adapter=args.kind, path=args.data, n_items=None, options=tuple(options))
    data = Path(args.data)
    try:  # a missing file is an OSError naming it (`main`); toyarith needs none
        items = adapter_cls(spec).load_all(data)
    except (pl.exceptions.PolarsError, pa.ArrowException) as e:  # a table that is not the format
        raise CliError(f"{data}: cannot be read as {args.kind} data ({_one_line(str(e))})") from None
    except ValueError as e:  # the adapter's own message (a bad option, a malformed file)
        raise CliError(_one_line(str(e))) from None
    gens = io.read_table(args.generations, required=["item_id", "answer_text"], what="generations")
    with io.reading(args.generations, errors=(ValueError,)):
        scored = score_generations(spec, items, gens)
    io.write_parquet(scored, args.output, io.provenance(
        rule="cli:score", inputs={"data": args.data, "generations": args.generations},
        datasets={args.kind: {"adapter": args.kind, "adapter_version": adapter_cls.version, "path": args.data}}))
    n_valid = int(scored["valid"].sum())
    print(f"{scored.height} rows scored ({n_valid} valid, {int(scored['correct'].fill_null(False).sum())} correct)"
          f" -> {args.output}")
    return 0


def _cache_root(args) -> Path:
    if args.dir:
        return Path(args.dir)
    from cotransfer.stages import cache_dir

    root = cache_dir(_load_config(args.config))
    if root is None:
        raise SystemExit(f"cotransfer cache: error: {args.config} turns the request cache off (engine.cache: false)")
    return Path(root)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_cache(args) -> int:
    from cotransfer import cache as C
    from cotransfer import io

    root = _cache_root(args)
    with io.reading(root, what="request cache"):  # a damaged shard: name the cache at least
        infos = C.scan(root)
    if args.action == "stats":
        if not infos:
            print(f"{root}: empty")
            return 0
        print(f"{'engine id':<20}  {'models':<24} {'backend':<16} {'dtype':<9} {'tp':>2} {'entries':>8} "
              f"{'shards':>6} {'size':>10}  newest")
        for i in infos:
            ident = i.identity
            backend = f"{ident.get('backend')} {ident.get('backend_version') or ''}".strip()
            print(f"{i.id:<20}  {','.join(i.models) or '?':<24} {backend:<16} {str(ident.get('dtype')):<9} "
                  f"{ident.get('tensor_parallel_size', ''):>2} {i.entries:>8} {i.shards:>6} {_size(i.bytes):>10}  "
                  f"{i.newest_utc or '-'}")
        print(f"{root}: {sum(i.entries for i in infos)} entries, {sum(i.shards for i in infos)} shards, "
              f"{_size(sum(i.bytes for i in infos))}")
        return 0
    # prune
    import shutil

    drop_models = set(args.model or [])
    kept = dropped = 0
    for i in infos:
        d = root / i.id
        if drop_models & set(i.models) or (args.all):
            print(f"removing {i.id} ({','.join(i.models)}): {i.entries} entries")
            dropped += i.entries
            shutil.rmtree(d)
            continue
        k, n = C.compact(d, older_than_days=args.older_than)
        kept += k
        dropped += n
        print(f"{i.id} ({','.join(i.models)}): {i.shards} shards -> {1 if k else 0}, kept {k}, dropped {n}")
    print(f"{root}: kept {kept} entries, dropped {dropped}")
    return 0


def cmd_validate(args) -> int:
    from cotransfer.config import ConfigError

    try:
        study = _load_config(args.config)
    except ConfigError as e:
        raise CliError(str(e), code=1) from None
    print(f"{args.config}: ok ({len(study.models)} models, {len(study.datasets)} datasets, "
          f"{len(study.ensembles)} ensembles)")
    return 0


def cmd_train_toys(args) -> int:
    import logging

    from cotransfer.toymodels import FILTER_RECIPES, RECIPES, train_recipes

    known = {*RECIPES, *FILTER_RECIPES}
    unknown = sorted(set(args.names) - known)
    if unknown:
        raise CliError(f"unknown model(s) {unknown}; known: {sorted(known)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for path, acc in train_recipes(args.out, args.names or None, args.jobs):
        if "exact_match" in acc:
            print(f"{path}: held-out drop sets {acc['exact_match']:.0%} exactly the rule's, "
                  f"{acc['parseable']:.0%} of replies parseable, last sentence dropped in "
                  f"{acc['last_sentence_dropped']:.0%}, a sentence the rule keeps dropped in "
                  f"{acc['drops_a_kept_sentence']:.0%}")
        else:
            print(f"{path}: held-out accuracy {acc['own']:.0%} with its own CoT, {acc['empty']:.0%} with an empty one")
    return 0


def cmd_cluster_check(args) -> int:
    from cotransfer import cluster

    snakefile = args.snakefile or str(Path(__file__).resolve().parents[2] / "Snakefile")
    if args.configfile:  # the last one is the study (cluster.planned_jobs); check it before planning
        _load_config(args.configfile[-1])
    if args.sinfo:
        sinfo = Path(args.sinfo)
        try:
            parts = cluster.parse_sinfo(sinfo.read_text())
        except ValueError as err:
            raise CliError(f"{sinfo}: {_one_line(str(err))}") from None
    try:
        if not args.sinfo:
            parts = cluster.sinfo()
        jobs = cluster.planned_jobs(args.profile, args.configfile or [], snakefile, args.snakemake_args)
    except (RuntimeError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise CliError(lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")) from None
    problems = cluster.check(jobs, parts)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s): these jobs could never be scheduled (docs/cluster.md)")
        return 1
    print(f"cluster check: every job fits its partition ({len(jobs)} jobs to submit; "
          f"partitions {', '.join(sorted(parts))})")
    return 0


def cmd_test_cluster(args) -> int:
    from cotransfer import testcluster

    try:
        if args.action == "start":
            c = testcluster.start(args.dir)
            print(f"test cluster up: node {c.node}, {c.cpus} CPUs, {c.mem_mb} MB, {testcluster.GPUS} GPUs "
                  f"(partitions cpu, gpu)\nexport SLURM_CONF={c.conf}")
        else:
            testcluster.TestCluster.load(args.dir).stop()
            print("test cluster stopped")
    except testcluster.ClusterUnavailable as err:
        raise CliError(_one_line(str(err))) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cotransfer", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("audit", help="where a result file came from: a summary (models, datasets, configs, code, "
                                     "engines, packages, time, SLURM jobs), then its lineage, every file once")
    a.add_argument("file")
    a.add_argument("--json", action="store_true",
                   help="one JSON document: the summary and every file of the lineage with its provenance")
    a.add_argument("--full", action="store_true", help="one line per file (default: a job's files as brace patterns)")
    a.add_argument("--no-verify", action="store_true",
                   help="do not hash the inputs to compare them with the sha256 recorded when they were read")
    a.set_defaults(fn=cmd_audit)

    c = sub.add_parser("consistency", help="pairwise consistency of an answers table")
    c.add_argument("answers")
    c.add_argument("--definition", choices=["paper", "strict"], default="paper")
    c.add_argument("-o", "--output", required=True)
    c.set_defaults(fn=cmd_consistency)

    m = sub.add_parser("metrics", help="every metric table of an answers table (consistency, accuracy, "
                                       "breakdown, self-consistency, transitions, involvement, ...)")
    m.add_argument("answers", help="the answers table (Parquet), e.g. results/tables/answers.parquet")
    m.add_argument("-o", "--output", required=True, metavar="DIR", help="writes DIR/<table>.parquet")
    m.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples over items for the CIs (0: no CIs; default 1000)")
    m.add_argument("--permutations", type=int, default=1000, metavar="P",
                   help="permutations of the paired consistency tests (0: no p-values; default 1000)")
    m.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the permutations (default 0)")
    m.add_argument("--config", help="the study's config: ensembles (involvement) and post_training tags")
    m.set_defaults(fn=cmd_metrics)

    s = sub.add_parser("score", help="re-score generations without re-running inference")
    s.add_argument("kind", help="dataset adapter name (medcalc, instruction_induction, toyarith, ...)")
    s.add_argument("--data", required=True, help="the dataset file in its official format")
    s.add_argument("--generations", required=True, help="Parquet with at least item_id and answer_text")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option as in the config, e.g. similarity=embedding (repeatable)")
    s.set_defaults(fn=cmd_score)

    k = sub.add_parser("cache", help="show or trim the request cache (every completed inference request)")
    k.add_argument("action", choices=["stats", "prune"],
                   help="stats: entries per model and engine; prune: merge shards, drop duplicates and what "
                        "--older-than / --model / --all select")
    k.add_argument("--config", default="config/demo.yaml", help="the study whose cache it is (default: the demo)")
    k.add_argument("--dir", help="the cache directory itself (instead of --config)")
    k.add_argument("--older-than", type=float, metavar="DAYS", help="prune: drop entries computed more than DAYS ago")
    k.add_argument("--model", action="append", metavar="NAME",
                   help="prune: drop every entry of the engines known by this model name (repeatable)")
    k.add_argument("--all", action="store_true", help="prune: empty the cache")
    k.set_defaults(fn=cmd_cache)

    v = sub.add_parser("validate", help="check a config file against the schema")
    v.add_argument("config")
    v.set_defaults(fn=cmd_validate)

    t = sub.add_parser("train-toys", help="train the demo's toy reasoning models and its answer-removal filter "
                       "(about 15 min for all five on 2 cores)")
    t.add_argument("out", help="output directory (the demo uses data/models)")
    t.add_argument("names", nargs="*", help="models to train (default: every recipe)")
    t.add_argument("-j", "--jobs", type=int, help="models trained at once, one thread each (default: one per core)")
    t.set_defaults(fn=cmd_train_toys)

    q = sub.add_parser("cluster-check", help="compare every job's SLURM request with the partitions sinfo lists; "
                       "name the jobs that could never be scheduled")
    q.add_argument("--profile", default="profiles/slurm", help="the Snakemake profile of the run (default %(default)s)")
    q.add_argument("--configfile", nargs="+", help="the run's config file(s) (default: the profile's)")
    q.add_argument("--sinfo", help='a saved `sinfo -h -o "%%P|%%a|%%l|%%c|%%m|%%G|%%D"` output instead of asking sinfo')
    q.add_argument("--snakefile", help="the workflow (default: this checkout's Snakefile)")
    q.add_argument("snakemake_args", nargs="*", help="more arguments for the planning dry run (after --)")
    q.set_defaults(fn=cmd_cluster_check)

    tc = sub.add_parser("test-cluster", help="start or stop a one-node SLURM cluster on this machine (root; "
                        "for tests and trying the profile)")
    tc.add_argument("action", choices=["start", "stop"])
    tc.add_argument("dir", help="the cluster's config, state and logs")
    tc.set_defaults(fn=cmd_test_cluster)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except Exception as e:  # noqa: BLE001 - bad input is one line; anything else re-raised below
        message = _input_error(e)
        if message is None:
            raise
        print(f"cotransfer {args.cmd}: error: {message}", file=sys.stderr)
        return getattr(e, "code", 2) if isinstance(e, CliError) else 2


if __name__ == "__main__":
    sys.exit(main())
