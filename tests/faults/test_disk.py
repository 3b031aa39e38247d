"""A full disk during a write (docs/reliability.md): a process whose files may not grow past a
limit (RLIMIT_FSIZE, the kernel's per-process file size cap: writes past it fail with EFBIG, as
on a full file system) writes over finished outputs. The write fails with an error naming the
file; the old output is untouched and no temporary file is left beside it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from cotransfer import io

LIMIT = 64 * 1024  # bytes: the "disk" holds the small old files, not the new ones

WRITERS = {
    "parquet": "io.write_parquet(big, dest, {'rule': 'fault'})",
    "text": "io.write_text(dest, 'x' * 1_000_000)",
    "json": "io.write_json(dest, {'rows': list(range(200_000))})",
    "score stage": "stages.score(study, 'toyarith', items, [gens], dest, {})",
}


def _old_file(kind: str, dest: Path) -> bytes:
    if kind in ("parquet", "score stage"):
        io.write_parquet(pl.DataFrame({"a": [1, 2, 3]}), dest, {"rule": "old"})
    else:
        io.write_text(dest, "old\n")
    return dest.read_bytes()


def _stage_inputs(tmp: Path) -> tuple[str, str]:
    """A small items table and a generations table large enough to pass the limit once scored."""
    from cotransfer.datasets import get_adapter
    from cotransfer.config import Study, validate

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_workflow import reduced_demo

    study = Study.from_dict(validate(reduced_demo()))
    items = get_adapter("toyarith")(study.datasets["toyarith"]).load(None)
    io.write_parquet(items, tmp / "items.parquet", {})
    n = 40_000
    ids = items["item_id"].to_list()
    gens = pl.DataFrame({"dataset": "toyarith", "item_id": [ids[i % len(ids)] for i in range(n)],
                         "condition": "transfer", "variant": "full", "cot_source": "toy_qwq",
                         "evaluator": [f"m{i}" for i in range(n)], "sample": 0,
                         "answer_text": [f"The answer is {i % 10}." for i in range(n)]})
    io.write_parquet(gens, tmp / "gens.parquet", {})
    return str(tmp / "items.parquet"), str(tmp / "gens.parquet")


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_full_disk_keeps_the_old_output_and_names_the_file(tmp_path, kind):
    dest = tmp_path / "out" / ("table.parquet" if kind in ("parquet", "score stage") else "note.json")
    dest.parent.mkdir()
    old = _old_file(kind, dest)
    items, gens = _stage_inputs(tmp_path) if kind == "score stage" else ("", "")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np, polars as pl
        from cotransfer import io, stages
        from cotransfer.config import Study, validate
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from test_workflow import reduced_demo
        study = Study.from_dict(validate(reduced_demo()))
        items, gens, dest = {items!r}, {gens!r}, {str(dest)!r}
        big = pl.DataFrame({{"x": np.random.default_rng(0).random(200_000)}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))
        try:
            {WRITERS[kind]}
        except OSError as e:
            print("ERROR", e)
            sys.exit(3)
        print("WROTE")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "File too large" in proc.stdout and str(dest) in proc.stdout, proc.stdout
    assert dest.read_bytes() == old  # the finished output is whole and unchanged
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left
