"""Resumable inference: finished shards survive a crash and are reused, never duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest

from cotransfer.config import Study, validate
from cotransfer.engine import Completion
from cotransfer.inference import Job, prefilled_run
from test_formats import Tok


class FakeEngine:
    """Answers every request with the item's prompt length; counts the requests it served."""

    tokenizer = Tok()

    def __init__(self, fail_after: int | None = None):
        self.served = 0
        self.fail_after = fail_after

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, requests, what=""):
        if self.fail_after is not None and self.served + len(requests) > self.fail_after:
            raise RuntimeError("preempted")
        self.served += len(requests)
        return [Completion(f"answer {len(r.prompt)}", 2, "stop") for r in requests]


ITEMS = [{"item_id": f"t{i}", "system": None, "user": f"Question {i}?"} for i in range(10)]


@pytest.fixture
def study(demo_config):
    return Study.from_dict(validate(demo_config))


def run(study, engine, parts, cots=None):
    return prefilled_run(Job(study, "toyarith", "toy_dapo", engine), ITEMS, cots, condition="empty",
                         variant=None, cot_source=None, parts=parts, shard_size=3)


def test_crash_keeps_finished_shards_and_rerun_reuses_them(study, tmp_path):
    parts = tmp_path / "out.parquet.parts"
    with pytest.raises(RuntimeError, match="preempted"):
        run(study, FakeEngine(fail_after=7), parts)  # shards of 3: two finish, the third fails
    assert len(list(parts.glob("*.parquet"))) == 2
    engine = FakeEngine()
    df = run(study, engine, parts)
    assert engine.served == 10 - 6  # only the unfinished rows are computed again
    assert df["item_id"].to_list() == [it["item_id"] for it in ITEMS]
    assert not df.select("item_id", "sample").is_duplicated().any()
    assert len(list(parts.glob("*.parquet"))) == 4


def test_changed_work_is_not_reused(study, tmp_path):
    parts = tmp_path / "out.parquet.parts"
    cots = pl.DataFrame({"item_id": [it["item_id"] for it in ITEMS], "sample": [0] * 10, "cot": ["a."] * 10})
    prefilled_run(Job(study, "toyarith", "toy_dapo", FakeEngine()), ITEMS, cots, condition="transfer",
                  variant="full", cot_source="toy_qwq", parts=parts, shard_size=3)
    changed = cots.with_columns(pl.when(pl.col("item_id") == "t4").then(pl.lit("b.")).otherwise("cot").alias("cot"))
    engine = FakeEngine()
    df = prefilled_run(Job(study, "toyarith", "toy_dapo", engine), ITEMS, changed, condition="transfer",
                       variant="full", cot_source="toy_qwq", parts=parts, shard_size=3)
    assert engine.served == 3  # only the shard holding t4 (t3..t5) is recomputed
    assert df.filter(pl.col("item_id") == "t4")["thinking"].item() == "b."


SCRIPT = textwrap.dedent("""
    import logging, sys, yaml
    from pathlib import Path
    from cotransfer.config import Study, validate
    from cotransfer.engine import Engine
    from cotransfer.inference import Job, prefilled_run

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        model, cfg, parts = sys.argv[1:4]
        study = Study.from_dict(validate(yaml.safe_load(open(cfg))))
        engine = Engine(model, dtype="float32", max_model_len=512)
        items = [{"item_id": f"t{i}", "system": None, "user": f"Start with {i}. Add 3."} for i in range(60)]
        df = prefilled_run(Job(study, "toyarith", "toy_qwq", engine), items, None, condition="empty",
                           variant=None, cot_source=None, parts=Path(parts), shard_size=1)
        df.write_parquet(Path(parts).parent / "final.parquet")
""")


@pytest.mark.vllm
def test_sigkill_halfway_then_rerun(toy_model_dir, tmp_path, demo_config):
    import yaml

    (tmp_path / "job.py").write_text(SCRIPT)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(demo_config))
    parts = tmp_path / "out.parquet.parts"
    cmd = [sys.executable, str(tmp_path / "job.py"), str(toy_model_dir), str(tmp_path / "cfg.yaml"), str(parts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 5:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert 5 <= len(before) < 60, "the job must be killed halfway"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"reused {len(before)} of 60 finished shards" in out.stdout
    for name, mtime in before.items():  # finished shards were reused, not recomputed
        assert (parts / name).stat().st_mtime_ns == mtime
    df = pl.read_parquet(tmp_path / "final.parquet")
    assert df.height == 60 and not df.select("item_id", "sample").is_duplicated().any()
    assert sorted(df["item_id"]) == sorted(f"t{i}" for i in range(60))
