"""Dataset adapters: one module per dataset, registered by name.

An adapter owns everything dataset-specific: fetching the raw files (a local rule, at a pinned
revision), drawing the sample once, building the chat messages of an item, and parsing and scoring
an answer. The pipeline only sees the *items table* and `Scored` results:

items table (`results/items/{dataset}.parquet`), one row per sampled item, in sample order:
    item_id  str   stable id (MedCalc: its Row Number)
    system   str?  system message (null: none)
    user     str   user message
    gold     str   gold answer, for reading; scoring uses `meta` too
    meta     str   JSON object with whatever the scorer needs (limits, calculator id, ...)

Adding a dataset is one module that subclasses `DatasetAdapter`, decorated with
`@register("name")`, plus an import line below (docs/datasets.md).
"""

from __future__ import annotations

from cotransfer.datasets.base import ADAPTERS, DatasetAdapter, Scored, get_adapter, register

# Registration happens on import; keep these light (no torch, no vLLM).
from cotransfer.datasets import toyarith  # noqa: E402,F401
from cotransfer.datasets import medcalc  # noqa: E402,F401
from cotransfer.datasets import instruction_induction  # noqa: E402,F401
from cotransfer.datasets import gsm8k  # noqa: E402,F401

__all__ = ["ADAPTERS", "DatasetAdapter", "Scored", "get_adapter", "register"]
