"""Resume through the request cache: a job killed with SIGKILL mid-run, re-run, computes only
the requests the cache lacks, and its output has every row once (real vLLM on a toy model)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest

SCRIPT = textwrap.dedent("""
    import logging, sys, yaml
    from pathlib import Path
    from cotransfer.config import Study, validate
    from cotransfer.engine import Engine
    from cotransfer.inference import Job, prefilled_run

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        model, cfg, cache, out = sys.argv[1:5]
        study = Study.from_dict(validate(yaml.safe_load(open(cfg))))
        engine = Engine(model, dtype="float32", max_model_len=512, cache_dir=cache, weights={"weights_sha256": "toy"})
        items = [{"item_id": f"t{i}", "system": None, "user": f"Start with {i}. Add 3."} for i in range(60)]
        df = prefilled_run(Job(study, "toyarith", "toy_qwq", engine), items, None, condition="empty",
                           variant=None, cot_source=None, shard_size=1)
        df.write_parquet(out)
        print(f"RESULT loaded={engine.loaded} cached={engine.stats.cached} computed={engine.stats.computed}")
""")


def cache_rows(cache) -> int:
    files = [p for p in cache.rglob("*.parquet") if not p.name.startswith(".")]
    return sum(pl.read_parquet(p, columns=["key"]).height for p in files)


@pytest.mark.vllm
def test_sigkill_halfway_then_rerun_computes_only_the_missing_requests(toy_model_dir, tmp_path, demo_config):
    import yaml

    (tmp_path / "job.py").write_text(SCRIPT)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(demo_config))
    cache = tmp_path / "cache"
    cmd = [sys.executable, str(tmp_path / "job.py"), str(toy_model_dir), str(tmp_path / "cfg.yaml"), str(cache),
           str(tmp_path / "final.parquet")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(cache.rglob("[0-9]*.parquet"))) < 5:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = cache_rows(cache)
    assert 5 <= done < 60, "the job must be killed halfway"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"RESULT loaded=(\w+) cached=(\d+) computed=(\d+)", out.stdout)
    assert m and (int(m.group(2)), int(m.group(3))) == (done, 60 - done), out.stdout[-2000:]
    assert cache_rows(cache) == 60  # nothing was computed (or cached) twice
    df = pl.read_parquet(tmp_path / "final.parquet")
    assert df.height == 60 and not df.select("item_id", "sample").is_duplicated().any()
    assert sorted(df["item_id"]) == sorted(f"t{i}" for i in range(60))
    # a third run finds everything and never loads the model
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "RESULT loaded=False cached=60 computed=0" in again.stdout
    assert pl.read_parquet(tmp_path / "final.parquet").equals(df)


ENSEMBLE_SCRIPT = textwrap.dedent("""
    import logging, sys, yaml
    from cotransfer.config import EnsembleSpec, Study, validate
    from cotransfer.engine import Engine
    from cotransfer.ensemble import run

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        models, cfg, cache, steplog, out = sys.argv[1:6]
        study = Study.from_dict(validate(yaml.safe_load(open(cfg))))
        paths = dict(zip(("toy_qwq", "toy_dapo", "toy_opent"), models.split(",")))
        engines = {m: Engine(p, dtype="float32", max_model_len=512, cache_dir=None if cache == "-" else cache,
                             weights={"weights_sha256": m}, name=m) for m, p in paths.items()}
        spec = EnsembleSpec("ens", ("toy_qwq", "toy_dapo"), ("toy_opent",), candidates=2, chunk_tokens=4,
                            max_steps=8, thinking_cap=10_000, scoring="paper")
        items = [{"item_id": f"t{i}", "system": None, "user": f"Start with {i}. Add 3."} for i in range(6)]
        rows, steps = run(study, "toyarith", spec, items, engines, step_log=None if steplog == "-" else steplog)
        rows.write_parquet(out + ".rows.parquet")
        steps.drop("wall_s").write_parquet(out + ".steps.parquet")
        print("RESULT computed=" + ",".join(str(e.stats.computed) for e in engines.values()))
""")


@pytest.mark.vllm
@pytest.mark.parametrize("resume", ["step_log", "request_cache"])
def test_ensemble_killed_and_rerun_ends_identical_to_an_uninterrupted_run(tmp_path, demo_config, resume):
    """A SIGKILLed ensemble job, re-run, ends identical to a run never interrupted (`paper`
    scoring, whose carried context likelihoods must survive the kill too), by either resume path:
    its append-only step log alone (no request cache: it continues after the last finished step),
    or the request cache alone (the finished steps' calls are replayed from it)."""
    import yaml

    from cotransfer.toymodels import build

    models = [str(build(tmp_path / name, fam, {"seed": seed, "opens_thinking": name == "toy_qwq"}))
              for name, fam, seed in (("toy_qwq", "think", 1), ("toy_dapo", "think", 2),
                                      ("toy_opent", "openthinker", 3))]
    (tmp_path / "job.py").write_text(ENSEMBLE_SCRIPT)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(demo_config))
    use_log = resume == "step_log"

    def cmd(tag, out):
        cache = "-" if use_log else str(tmp_path / f"cache-{tag}")
        steplog = str(tmp_path / f"log-{tag}") if use_log else "-"
        return [sys.executable, str(tmp_path / "job.py"), ",".join(models), str(tmp_path / "cfg.yaml"),
                cache, steplog, str(tmp_path / out)]

    def progress(tag) -> int:  # finished steps in the step log, or shards in the request cache
        if use_log:
            return len(list((tmp_path / f"log-{tag}").glob("step-*.json")))
        return len(list((tmp_path / f"cache-{tag}").rglob("[0-9]*.parquet")))

    whole = subprocess.run(cmd("a", "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = subprocess.Popen(cmd("b", "resumed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and progress("b") < (3 if use_log else 12):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "resumed.rows.parquet").exists(), "the job must be killed before it ends"
    again = subprocess.run(cmd("b", "resumed"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    computed = lambda out: sum(map(int, re.search(r"RESULT computed=(\S+)", out).group(1).split(",")))  # noqa: E731
    # the re-run computed less than a whole run: the finished steps were not computed again
    assert 0 < computed(again.stdout) < computed(whole.stdout)
    if use_log:
        assert re.search(r"resumed after step \d+", again.stdout)
    else:
        done = cache_rows(tmp_path / "cache-b")
        assert done == cache_rows(tmp_path / "cache-a")  # nothing computed twice
    for part in ("rows", "steps"):
        assert pl.read_parquet(tmp_path / f"resumed.{part}.parquet").equals(pl.read_parquet(tmp_path / f"whole.{part}.parquet"))
