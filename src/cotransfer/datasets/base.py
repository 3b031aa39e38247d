"""The adapter interface and its registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import polars as pl

if TYPE_CHECKING:
    from cotransfer.config import DatasetSpec

ITEM_SCHEMA = {"item_id": pl.String, "system": pl.String, "user": pl.String,
               "gold": pl.String, "meta": pl.String}

ADAPTERS: dict[str, type["DatasetAdapter"]] = {}


def register(name: str):
    """Class decorator: make an adapter available under `name` (the config's `adapter:`)."""

    def add(cls):
        if ADAPTERS.setdefault(name, cls) is not cls:
            raise ValueError(f"dataset adapter {name!r} registered twice")
        cls.name = name
        return cls

    return add


def get_adapter(name: str) -> type["DatasetAdapter"]:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset adapter {name!r}; known: {sorted(ADAPTERS)}") from None


@dataclass(frozen=True, slots=True)
class Scored:
    """One parsed and scored answer.

    answer  normalized answer string used for comparisons between models (None: not parsed)
    valid   whether the answer counts for consistency
    correct True/False, or None when it cannot be judged
    status  "ok" or a reason code (not_found, no_number, bad_date, bad_expr, ...)
    """

    answer: str | None
    valid: bool
    correct: bool | None
    status: str


class DatasetAdapter:
    """Base class. Subclasses set `version` and implement `load`, `parse_and_score`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    #: whether `fetch` needs the network (then the pipeline runs it as a local rule)
    remote: ClassVar[bool] = False

    def __init__(self, spec: "DatasetSpec"):
        self.spec = spec

    # -- data stage -------------------------------------------------------------------------

    def fetch(self, dest: Path) -> dict:
        """Download the raw files into `dest`; return their provenance (ids, revision, sha256)."""
        dest.mkdir(parents=True, exist_ok=True)
        return {}

    def load(self, raw: Path) -> pl.DataFrame:
        """Return the sampled items table (ITEM_SCHEMA columns), drawn once, in sample order."""
        raise NotImplementedError

    def load_all(self, raw: Path | None) -> pl.DataFrame:
        """Every item of the raw data, unsampled (for `cotransfer score`); default: `load`."""
        return self.load(raw)

    # -- scoring ----------------------------------------------------------------------------

    def parse_and_score(self, answer_text: str | None, item: dict) -> Scored:
        """Parse the generated answer segment only (never the prompt or the thinking)."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------

    def copy_local_file(self, dest: Path) -> dict:
        """Copy the config's local `path:` file into `dest`; its provenance (no hub revision)."""
        import shutil

        from cotransfer.io import sha256_file

        src = Path(self.spec.path)
        if not src.is_file():
            raise FileNotFoundError(f"datasets.{self.spec.name}.path: no such file {src}")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / src.name)
        return {"dataset_repo_id": self.spec.repo_id, "dataset_revision": None, "resolved_revision": None,
                "source_path": str(src), "data_files": [src.name],
                "files": {src.name: sha256_file(dest / src.name)}}

    @staticmethod
    def items_frame(rows: list[dict]) -> pl.DataFrame:
        """Build an items table, checking the contract: unique non-empty ids, JSON meta."""
        for r in rows:
            r.setdefault("system", None)
            r["meta"] = json.dumps(r.get("meta") or {}, sort_keys=True)
        df = pl.DataFrame(rows, schema=ITEM_SCHEMA)
        if df.is_empty():
            raise ValueError("dataset produced no items")
        dup = df.filter(pl.col("item_id").is_duplicated())["item_id"].unique().to_list()
        if dup:
            raise ValueError(f"duplicate item_id values: {dup[:5]}")
        if df["item_id"].is_null().any() or (df["item_id"] == "").any():
            raise ValueError("empty item_id")
        return df
