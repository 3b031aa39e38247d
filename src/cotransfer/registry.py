"""Name -> class registries (dataset adapters, similarity backends): one way to make them."""

from __future__ import annotations

from collections.abc import Callable


def registrar(table: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    """A class decorator factory `register(name)` that adds the class to `table` under `name`,
    sets `cls.name`, and refuses a second class under the same name (`kind` names it)."""

    def register(name: str):
        def add(cls):
            if table.setdefault(name, cls) is not cls:
                raise ValueError(f"{kind} {name!r} registered twice")
            cls.name = name
            return cls

        return add

    return register
