"""Shared fixtures. Frames are built in code; toy models are built by the project's own builder."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_yaml(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


@pytest.fixture
def demo_config() -> dict:
    return copy.deepcopy(load_yaml("config/demo.yaml"))


@pytest.fixture
def paper_config() -> dict:
    return copy.deepcopy(load_yaml("config/config.yaml"))


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """A toy `think` model whose template opens <think> itself (like QwQ)."""
    from cotransfer.toymodels import build

    return build(tmp_path_factory.mktemp("toy") / "toy_qwq", "think", {"seed": 1, "opens_thinking": True})


@pytest.fixture(scope="session")
def fault_demo(tmp_path_factory) -> Path:
    """The fault suite's demo (tests/faults/, docs/reliability.md): the workflow tests' reduced
    demo (two toy models, three items, an ensemble, a random filter model) with shards of 4
    requests, so that every inference job has several kill points; run to the end once."""
    from test_workflow import reduced_demo, snakemake

    cfg = reduced_demo()
    cfg["engine"] = {**cfg.get("engine", {}), "shard_size": 4}
    wd = tmp_path_factory.mktemp("fault_demo")
    (wd / "demo.yaml").write_text(yaml.safe_dump(cfg))
    snakemake("--cores", "2", "--configfile", "demo.yaml", cwd=wd)
    return wd
