"""`cotransfer audit FILE`: where a result file came from, summary first.

`collect` follows the provenance documents (`cotransfer.io`) from a file through its inputs,
each file once. The files are grouped into the jobs that wrote them (same rule, wildcards, start
time, SLURM job and host); a file without provenance (a model manifest, a raw data file, a
missing one) is a group of its own. Groups are numbered in the order of a depth-first walk from
the audited file, and an input is named by its group's number, so the lineage lists every file
once however often it was read.

`summarize` reduces the documents to what a reader checks first: models with their resolved
revisions, datasets, configs, code commits, engines and what they ran on, package versions
(once; where files differ, which), the time span, SLURM jobs, and whether every input still has
the sha256 recorded when it was read. `render` prints both; `as_json` gives the same for
machines, with every file's whole provenance document.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

WIDTH = 120


@dataclass
class FileNode:
    path: str  # as recorded by the reader (relative to the workflow directory), or as given
    where: Path  # where it was found (or looked for)
    kind: str  # "provenance", "no-provenance" (Parquet), "unreadable" (Parquet), "file" (not Parquet), "missing"
    prov: dict | None = None
    problem: str | None = None  # why an "unreadable" file cannot be read (truncated, not Parquet, ...)
    inputs: list[tuple[str, str | None]] = field(default_factory=list)  # (node key, recorded sha256)
    sha_now: str | None = None
    group: int = 0


@dataclass
class Group:
    number: int
    files: list[str]  # node keys
    depth: int = 0
    inputs: list[int] = field(default_factory=list)  # group numbers

    def prov(self, nodes: dict[str, FileNode]) -> dict | None:
        return nodes[self.files[0]].prov


@dataclass
class Lineage:
    root: str
    nodes: dict[str, FileNode]  # key -> node, in the order of a depth-first walk
    groups: list[Group]  # by number (1-based: groups[n - 1])
    changed: list[tuple[str, str, str]]  # (reader key, input key, "changed" | "missing")
    verified: bool

    def documents(self) -> list[tuple[FileNode, dict]]:
        return [(n, n.prov) for n in self.nodes.values() if n.prov is not None]


# --------------------------------------------------------------------------------------------
# collecting


def collect(path: str | os.PathLike, *, verify: bool = True) -> Lineage:
    """The lineage of `path`: every file reached through recorded inputs, once each.

    Relative input paths are relative to the directory the workflow ran in: the current
    directory, or else the nearest directory above the audited file where they exist. With
    `verify`, every input is hashed once and compared with the sha256 its readers recorded.
    """
    from cotransfer.io import TableError, read_provenance, reading, sha256_path

    root = Path(path)
    bases = [Path.cwd()] + list(root.resolve().parents)
    nodes: dict[str, FileNode] = {}

    def locate(p: str) -> Path:
        q = Path(p)
        if q.is_absolute():
            return q
        for b in bases:
            if (b / q).exists():
                return b / q
        return Path.cwd() / q

    def key_of(where: Path) -> str:
        return str(where.resolve()) if where.exists() else os.path.normpath(str(where.absolute()))

    root_key = key_of(root)
    stack: list[tuple[str, Path]] = [(str(path), root)]
    while stack:
        shown, where = stack.pop()
        key = key_of(where)
        if key in nodes:
            continue
        if not where.exists():
            nodes[key] = FileNode(shown, where, "missing")
            continue
        prov = problem = None
        if where.suffix == ".parquet" and where.is_file():
            try:
                with reading(where):
                    prov = read_provenance(where)
            except TableError as e:  # truncated, corrupt, not Parquet: shown, with how to remake it
                problem = str(e).removeprefix(f"{where}: ")
        kind = ("provenance" if prov else "unreadable" if problem else
                "no-provenance" if where.suffix == ".parquet" else "file")
        node = nodes[key] = FileNode(shown, where, kind, prov, problem=problem)
        todo = []
        for inp in (prov or {}).get("inputs", {}).values():
            loc = locate(str(inp["path"]))
            node.inputs.append((key_of(loc), inp.get("sha256")))
            todo.append((str(inp["path"]), loc))
        stack.extend(reversed(todo))

    changed = []
    if verify:
        read = {inp for node in nodes.values() for inp, _ in node.inputs}
        for key, node in nodes.items():
            if node.kind != "missing" and (key in read or node.prov is None):
                node.sha_now = sha256_path(node.where)
        for key, node in nodes.items():
            for inp, recorded in node.inputs:
                if nodes[inp].kind == "missing":
                    changed.append((key, inp, "missing"))
                elif recorded and nodes[inp].sha_now != recorded:
                    changed.append((key, inp, "changed"))
    return Lineage(root_key, nodes, _group(root_key, nodes), changed, verify)


def _job_key(key: str, node: FileNode) -> tuple:
    p = node.prov
    if p is None:
        return ("file", key)
    return ("job", p.get("rule"), json.dumps(p.get("wildcards") or {}, sort_keys=True), p.get("started_utc"),
            p.get("slurm_job_id"), (p.get("hardware") or {}).get("host"))


def _group(root: str, nodes: dict[str, FileNode]) -> list[Group]:
    """Files into the jobs that wrote them, numbered depth-first from the root's job."""
    members: dict[tuple, list[str]] = {}
    for key, node in nodes.items():
        members.setdefault(_job_key(key, node), []).append(key)
    job_of = {k: jk for jk, keys in members.items() for k in keys}
    edges: dict[tuple, list[tuple]] = {}
    for jk, keys in members.items():
        seen = dict.fromkeys(job_of[inp] for k in keys for inp, _ in nodes[k].inputs)
        seen.pop(jk, None)
        edges[jk] = list(seen)
    numbers: dict[tuple, int] = {}
    groups: list[Group] = []
    stack = [(job_of[root], 0)]
    while stack:
        jk, depth = stack.pop()
        if jk in numbers:
            continue
        numbers[jk] = len(groups) + 1
        groups.append(Group(numbers[jk], members[jk], depth))
        stack.extend((child, depth + 1) for child in reversed(edges[jk]))
    for jk, n in numbers.items():
        groups[n - 1].inputs = [numbers[c] for c in edges[jk]]
        for k in members[jk]:
            nodes[k].group = n
    return groups


# --------------------------------------------------------------------------------------------
# summary


def _model_ref(m: dict) -> str:
    if m.get("repo_id"):
        rev = m.get("resolved_revision")
        return f"{m['repo_id']} @ {rev}" if rev else f"{m['repo_id']} @ {m.get('revision')} (not resolved)"
    sha = str(m.get("weights_sha256") or "?")[:12]
    if m.get("source") == "toy" or m.get("toy_version") is not None:
        return f"toy model v{m.get('toy_version')}, weights sha256 {sha}"
    return f"{m.get('path')}, weights sha256 {sha}"


def _dataset_ref(d: dict) -> str:
    parts = [f"adapter {d.get('adapter')} v{d.get('adapter_version')}"]
    repo = d.get("dataset_repo_id") or d.get("repo_id")
    if repo:
        rev = d.get("resolved_revision")
        parts.append(f"{repo} @ {rev}" if rev else f"{repo} @ {d.get('dataset_revision') or d.get('revision')} "
                                                  "(not resolved)")
    elif d.get("source_repo"):
        parts.append(f"{d['source_repo']} @ {d.get('commit')}")
    elif d.get("source_path") or d.get("path"):
        parts.append(str(d.get("source_path") or d.get("path")))
    else:
        parts.append("generated by the adapter")
    if d.get("n_items") is not None:
        parts.append(f"{d['n_items']} items")
    if d.get("seed") is not None:
        parts.append(f"seed {d['seed']}")
    return ", ".join(parts)


def _engines(prov: dict) -> list[tuple[str, dict]]:
    """The engines of one file: (label, details) per backend, with what it ran on
    (``hardware["engine"]``, see `io.provenance`)."""
    host = prov.get("hardware") or {}
    recorded = "engine" in host
    e = host.get("engine")
    if not recorded:
        where = "(hardware not recorded)"
    elif e is None:
        where = "no model loaded (every request from the request cache)"
    elif e.get("gpus"):
        gpus = ", ".join(f"{n} x {name}" for name, n in Counter(e["gpus"]).items())
        where = f"on {gpus} (CUDA {e.get('cuda') or e.get('hip')}, torch {e.get('torch')})"
    else:
        cap = f", {e['cpu_capability']}" if e.get("cpu_capability") else ""
        where = f"on CPU ({'CPU build' if e.get('cpu_build') else 'no GPU visible'}, torch {e.get('torch')}{cap})"
    settings = [m["engine"] for m in (prov.get("models") or {}).values() if m.get("engine")]
    backends = sorted({(s.get("backend"), s.get("backend_version")) for s in settings}, key=str)
    return [(f"{b} {v} {where}", {"backend": b, "backend_version": v, "hardware_recorded": recorded,
                                  "hardware": {k: x for k, x in (e or {}).items()
                                               if k not in ("loaded", "visible_devices")} or None})
            for b, v in backends]


def summarize(lineage: Lineage) -> dict:
    """What the lineage's provenance documents agree and differ on (the `summary` of --json).

    Each list holds one entry per distinct value: its fields, a `label` (how the text shows it),
    how many `files` have it and which `jobs` (numbers of `render`'s lineage) wrote them.
    """
    docs = lineage.documents()
    counts = Counter(n.kind for n in lineage.nodes.values())

    def tally(values) -> list[dict]:
        """[(label, fields, node)] -> one entry per distinct (label, fields)."""
        by: dict[str, tuple[str, dict, list[FileNode]]] = {}
        for label, fields, node in values:
            key = json.dumps([label, fields], sort_keys=True, default=str)
            by.setdefault(key, (label, fields, []))[2].append(node)
        out = [{**fields, "label": label, "files": len(ns), "jobs": sorted({n.group for n in ns})}
               for label, fields, ns in by.values()]
        return sorted(out, key=lambda e: e["jobs"][:1])  # in the order of the lineage

    def named(entries: list[dict]) -> list[dict]:
        """Mark the entries of a name with several (two revisions of one model, say)."""
        names = Counter(e["name"] for e in entries)
        return [{**e, "conflict": names[e["name"]] > 1} for e in entries]

    models = named(tally((f"{name}: {_model_ref(m)}", {"name": name, **{k: m.get(k) for k in _MODEL_KEYS}}, n)
                         for n, p in docs for name, m in sorted((p.get("models") or {}).items())))
    datasets = named(tally((f"{name}: {_dataset_ref(d)}", {"name": name, **{k: d.get(k) for k in _DATASET_KEYS}}, n)
                           for n, p in docs for name, d in sorted((p.get("datasets") or {}).items())))
    configs = tally((str(p.get("config_sha256") or "none recorded")[:16], {"config_sha256": p.get("config_sha256")}, n)
                    for n, p in docs)
    git = [((p.get("git") or {}).get("commit"), (p.get("git") or {}).get("dirty"), n) for n, p in docs]
    code = tally((f"{c} {({True: 'dirty', False: 'clean'}).get(d, 'state unknown')}", {"commit": c, "dirty": d}, n)
                 for c, d, n in git)
    engines = tally((label, fields, n) for n, p in docs for label, fields in _engines(p))
    # packages: one set where every file agrees; per package the versions where they differ
    sets = [({k: v for k, v in {**(p.get("packages") or {}), "python": p.get("python")}.items() if v}, n)
            for n, p in docs]
    common, differ = {}, {}
    for name in sorted({k for s, _ in sets for k in s}):
        versions = tally((s.get(name, "absent"), {"version": s.get(name)}, n) for s, n in sets)
        if len(versions) == 1:
            common[name] = versions[0]["version"]
        else:
            differ[name] = versions
    starts = [p["started_utc"] for _, p in docs if p.get("started_utc")]
    ends = [p["finished_utc"] for _, p in docs if p.get("finished_utc")]
    slurm = tally((str(p["slurm_job_id"]), {"slurm_job_id": str(p["slurm_job_id"])}, n)
                  for n, p in docs if p.get("slurm_job_id"))
    hosts = tally((str((p.get("hardware") or {}).get("host")), {"host": (p.get("hardware") or {}).get("host")}, n)
                  for n, p in docs)
    nodes = lineage.nodes
    return {
        "file": nodes[lineage.root].path,
        "files": len(nodes), "jobs": sum(1 for g in lineage.groups if nodes[g.files[0]].prov is not None),
        "with_provenance": counts["provenance"], "parquet_without_provenance": counts["no-provenance"],
        "other_files": counts["file"], "missing": counts["missing"], "unreadable": counts["unreadable"],
        "models": models, "datasets": datasets, "configs": configs, "code": code, "engines": engines,
        "packages": {"common": common, "differ": differ}, "hosts": hosts,
        "time": {"started_utc": min(starts) if starts else None, "finished_utc": max(ends) if ends else None},
        "slurm_jobs": {"ids": [s["slurm_job_id"] for s in slurm], "count": len(slurm),
                       "files_outside_slurm": len(docs) - sum(s["files"] for s in slurm), "by_id": slurm},
        "inputs": {"verified": lineage.verified, "recorded": sum(len(n.inputs) for n in nodes.values()),
                   "changed": [{"reader": nodes[r].path, "input": nodes[i].path, "state": s}
                               for r, i, s in lineage.changed]},
    }


_MODEL_KEYS = ("source", "repo_id", "revision", "resolved_revision", "path", "weights_sha256", "toy_version")
_DATASET_KEYS = ("adapter", "adapter_version", "dataset_repo_id", "repo_id", "revision", "dataset_revision",
                 "resolved_revision", "source_repo", "commit", "source_path", "path", "n_items", "seed", "split")


# --------------------------------------------------------------------------------------------
# text


def _ranges(numbers, marked=()) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'; a number in `marked` stands alone, as 'n!'."""
    out: list[str] = []
    run: list[int] = []

    def flush():
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
            run.clear()

    for n in sorted(set(numbers)):
        if n in marked:
            flush()
            out.append(f"{n}!")
        else:
            if run and n != run[-1] + 1:
                flush()
            run.append(n)
    flush()
    return ", ".join(out)


def _refs(numbers, changed=()) -> str:
    """'  <- 3-5, 8!': the [n] read, '!' after those whose file changed since it was read."""
    return f"  <- {_ranges(numbers, set(changed))}" if numbers else ""


def _brace(xs) -> str:
    xs = sorted(xs)
    return xs[0] if len(xs) == 1 else "{" + ",".join(xs) + "}"


def compact_paths(paths: list[str]) -> list[str]:
    """Paths as brace patterns, each path in exactly one: files of one directory share a pattern
    (`d/{a,b}.parquet`), and sibling directories holding the same names share one too
    (`d/{x,y}/{a,b}.parquet`)."""
    by_dir: dict[tuple[str, str], list[str]] = {}
    for p in paths:
        pp = PurePosixPath(p)
        stem = pp.name[: len(pp.name) - len(pp.suffix)] if pp.suffix else pp.name
        by_dir.setdefault((str(pp.parent), pp.suffix), []).append(stem)
    merged: dict[tuple, list[str]] = {}
    for (d, suffix), stems in by_dir.items():
        dp = PurePosixPath(d)
        if dp.name in ("", ".", ".."):  # the current or root directory: nothing to merge
            merged.setdefault((d, suffix, tuple(sorted(stems)), False), [])
        else:
            merged.setdefault((str(dp.parent), suffix, tuple(sorted(stems)), True), []).append(dp.name)
    out = []
    for (parent, suffix, stems, nested), dirs in merged.items():
        prefix = "" if parent in ("", ".") else parent.rstrip("/") + "/"
        out.append(f"{prefix}{_brace(dirs) + '/' if nested else ''}{_brace(stems)}{suffix}")
    return sorted(out)


def _when(iso: str | None, date_shown: bool) -> str:
    if not iso:
        return "?"
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return t.strftime("%Y-%m-%d %H:%M:%S") if date_shown else t.strftime("%H:%M:%S")


def _span(start: str | None, end: str | None) -> str:
    if not start or not end:
        return f"{start or '?'} -> {end or '?'}"
    a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
    secs = max(0, int((b - a).total_seconds()))
    parts = [(secs // 86400, "d"), (secs // 3600 % 24, "h"), (secs // 60 % 60, "min"), (secs % 60, "s")]
    took = " ".join(f"{v} {u}" for v, u in parts if v) or "0 s"
    end_fmt = "%H:%M:%S" if a.date() == b.date() else "%Y-%m-%d %H:%M:%S"
    return f"{a:%Y-%m-%d %H:%M:%S} -> {b.strftime(end_fmt)} UTC ({took})"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _jobs(numbers: list[int]) -> str:
    return f"job{'s' if len(numbers) > 1 else ''} {_ranges(numbers)}"


def _wrap(text: str, indent: str, first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first if first is not None else indent,
                         subsequent_indent=indent, break_on_hyphens=False, break_long_words=False) or [indent]


def _summary_lines(s: dict) -> list[str]:
    lines = [f"cotransfer audit {s['file']}",
             f"{_n(s['files'], 'file')} in the lineage, written by {_n(s['jobs'], 'job')}"
             + (f"; {_n(s['other_files'], 'other file')} (no provenance)" if s["other_files"] else "")
             + (f"; {_n(s['parquet_without_provenance'], 'Parquet file')} WITHOUT provenance"
                if s["parquet_without_provenance"] else "")
             + (f"; {s['missing']} MISSING" if s["missing"] else "")
             + (f"; {s['unreadable']} UNREADABLE" if s["unreadable"] else ""), ""]
    if not s["with_provenance"]:
        return lines[:2] + ["no provenance recorded in any file"]

    def rows(label: str, entries: list[dict], show_jobs: bool | None = None) -> None:
        if not entries:
            lines.append(f"{label:<10}  none recorded")
            return
        several = len(entries) > 1 if show_jobs is None else show_jobs
        for i, e in enumerate(entries):
            where = _jobs(e["jobs"]) if several or e.get("conflict") else _n(e["files"], "file")
            lines.extend(_wrap(f"{e['label']} ({where})", " " * 12, f"{label if i == 0 else '':<10}  "))

    rows("models", s["models"], show_jobs=False)
    rows("datasets", s["datasets"], show_jobs=False)
    rows("configs", s["configs"])
    rows("code", s["code"])
    rows("engines", s["engines"], show_jobs=False)
    pk = s["packages"]
    common = ", ".join(f"{k} {v}" for k, v in pk["common"].items())
    lines.extend(_wrap(common + (" (the same in every file)" if not pk["differ"] else ""), " " * 12,
                       f"{'packages':<10}  "))
    for name, versions in pk["differ"].items():
        text = "; ".join(f"{v['label']} in {_jobs(v['jobs'])}" for v in versions)
        lines.extend(_wrap(f"{name} DIFFERS: {text}", " " * 12))
    hosts = [h["label"] for h in s["hosts"]]
    lines.append(f"{'hosts':<10}  {', '.join(hosts[:6])}{f' and {len(hosts) - 6} more' if len(hosts) > 6 else ''}")
    lines.append(f"{'time':<10}  {_span(s['time']['started_utc'], s['time']['finished_utc'])}")
    sj = s["slurm_jobs"]
    if not sj["count"]:
        lines.append(f"{'slurm':<10}  none (local run)")
    else:
        ids = [int(i) if str(i).isdigit() else i for i in sj["ids"]]
        shown = _ranges(ids) if all(isinstance(i, int) for i in ids) else ", ".join(map(str, ids))
        outside = (f"; {_n(sj['files_outside_slurm'], 'file')} written outside SLURM"
                   if sj["files_outside_slurm"] else "")
        lines.extend(_wrap(f"{_n(sj['count'], 'SLURM job')}: {shown}{outside}", " " * 12, f"{'slurm':<10}  "))
    inp = s["inputs"]
    if not inp["verified"]:
        lines.append(f"{'inputs':<10}  not checked (--no-verify)")
    elif not inp["recorded"]:
        lines.append(f"{'inputs':<10}  none recorded")
    elif not inp["changed"]:
        lines.append(f"{'inputs':<10}  all {inp['recorded']} recorded inputs still have the sha256 their readers saw")
    else:
        lines.append(f"{'inputs':<10}  {len(inp['changed'])} of {inp['recorded']} inputs differ from what their "
                     f"readers saw (marked ! below):")
        readers: dict[tuple[str, str], list[str]] = {}
        for c in inp["changed"]:
            readers.setdefault((c["input"], c["state"]), []).append(c["reader"])
        for (path, state), by in list(readers.items())[:8]:
            lines.extend(_wrap(f"{path} {state}, read by {', '.join(compact_paths(by))}", " " * 14, " " * 12))
        if len(readers) > 8:
            lines.append(f"{'':<12}and {len(readers) - 8} more (--json lists them)")
    return lines


def render(lineage: Lineage, summary: dict | None = None, *, full: bool = False) -> str:
    """The summary, then the lineage: each job once, with its files and the jobs it read from."""
    s = summary or summarize(lineage)
    nodes = lineage.nodes
    lines = _summary_lines(s)
    t = s["time"]
    date_shown = not (t["started_utc"] and t["finished_utc"]
                      and t["started_utc"][:10] == t["finished_utc"][:10])
    several = {"code": len(s["code"]) > 1, "config": len(s["configs"]) > 1}
    bad = {(i, r) for r, i, _ in lineage.changed}
    changed_by_group: dict[int, set[int]] = {}
    for inp, reader in bad:
        changed_by_group.setdefault(nodes[reader].group, set()).add(nodes[inp].group)
    others = len(lineage.groups) - s["jobs"]
    lines += ["", f"Lineage: {_n(s['jobs'], 'job')}" + (f" and {_n(others, 'other file')}" if others else "")
              + ", each once; '<- n': the [n] it read" + ("; 'n!': changed since" if bad else "")]
    for g in lineage.groups:
        pad = "  " * min(g.depth, 8)
        head = f"{pad}[{g.number}] "
        first = nodes[g.files[0]]
        p = first.prov
        if p is None:
            what = {"missing": "MISSING", "no-provenance": "Parquet WITHOUT provenance", "file": "no provenance",
                    "unreadable": f"UNREADABLE: {first.problem}"}
            sha = f", sha256 {first.sha_now[:12]}" if first.sha_now else ""
            lines.append(f"{head}{first.path}  ({what[first.kind]}{sha})")
            continue
        wc = ", ".join(f"{k}={v}" for k, v in (p.get("wildcards") or {}).items())
        finished = max((nodes[k].prov.get("finished_utc") or "" for k in g.files), default="")
        bits = [f"rule {p.get('rule')}" + (f" [{wc}]" if wc else ""),
                f"{len(g.files)} files" if len(g.files) > 1 else "",
                f"finished {_when(finished, date_shown)}",
                f"slurm {p['slurm_job_id']}" if p.get("slurm_job_id") else "",
                f"code {str((p.get('git') or {}).get('commit'))[:8]}{' dirty' if (p.get('git') or {}).get('dirty') else ''}"
                if several["code"] else "",
                f"config {str(p.get('config_sha256'))[:8]}" if several["config"] else ""]
        lines.extend(_wrap("  ".join(b for b in bits if b) + _refs(g.inputs, changed_by_group.get(g.number, ())),
                           pad + " " * (len(head) - len(pad) + 2), head))
        indent = pad + " " * (len(head) - len(pad))
        if full:
            for k in g.files:
                n = nodes[k]
                own = _refs([nodes[i].group for i, _ in n.inputs], {nodes[i].group for i, _ in n.inputs if (i, k) in bad})
                lines.append(f"{indent}{n.path}" + (own if len(g.files) > 1 else ""))
        else:
            lines.extend(_wrap(", ".join(compact_paths([nodes[k].path for k in g.files])), indent))
    return "\n".join(lines) + "\n"


def as_json(lineage: Lineage, summary: dict | None = None) -> dict:
    """{"summary": ..., "files": [...]}: every file once, with its whole provenance document."""
    nodes = lineage.nodes
    files = []
    for key, n in nodes.items():
        p = n.prov or {}
        files.append({
            "path": n.path, "kind": n.kind, "problem": n.problem, "job": n.group, "rule": p.get("rule"),
            "wildcards": p.get("wildcards"), "started_utc": p.get("started_utc"),
            "finished_utc": p.get("finished_utc"), "slurm_job_id": p.get("slurm_job_id"),
            "sha256": n.sha_now, "inputs": [nodes[i].path for i, _ in n.inputs],
            "changed_inputs": [nodes[i].path for r, i, _ in lineage.changed if r == key],
            "provenance": n.prov})
    return {"summary": summary or summarize(lineage), "files": files}
