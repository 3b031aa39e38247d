"""Fault injection for the fault suite (tests/faults/, docs/reliability.md): `COTRANSFER_FAULT`.

A job started by `stages.start_job` knows its rule; named points in the code (`point`) then let
a test end the job the way the kernel or a scheduler would, at a chosen place:

- ``kill:RULE:POINT:N``: the job of RULE is SIGKILLed the N-th time it reaches POINT. Points:
  ``shard`` (an inference shard done and its requests cached; the answer-removal filter's shards),
  ``step`` (an ensemble step done and logged), ``write`` (an output's temporary file written,
  before it is renamed onto the output: the kill falls inside an atomic write), ``read`` (the
  score and aggregate jobs, their inputs read).
- ``oom:RULE:VALUE:MB``: the job of RULE whose wildcards include VALUE is SIGKILLed, like a
  process the out-of-memory killer ended, whenever it was given less than MB of memory.

Without the variable every point is a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

ENV = "COTRANSFER_FAULT"
_state: dict = {"rule": None, "counts": {}}


def _die(what: str, why: str) -> None:
    log.error("simulated %s (%s): %s", what, ENV, why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def start(rule: str, wildcards: list[str], mem_mb: int | None) -> None:
    """Called once per job (`stages.start_job`): remember the rule; apply an `oom` fault."""
    _state["rule"], _state["counts"] = rule, {}
    spec = os.environ.get(ENV, "")
    kind, rule_, value, need = (spec.split(":") + ["", "", "", ""])[:4]
    if kind == "oom" and rule_ == rule and value in wildcards and (mem_mb is None or mem_mb < int(need)):
        _die("out-of-memory", f"this job needs {need} MB, it was given {mem_mb} MB")


def point(name: str) -> None:
    """A kill point (see the module docstring); a no-op unless COTRANSFER_FAULT names it."""
    spec = os.environ.get(ENV)
    if not spec or _state["rule"] is None:
        return
    kind, rule, where, n = (spec.split(":") + ["", "", "", ""])[:4]
    if kind != "kill" or rule != _state["rule"] or where != name:
        return
    counts = _state["counts"]
    counts[name] = counts.get(name, 0) + 1
    if counts[name] == int(n):
        _die("kill", f"rule {rule}, at {name} {n}")
