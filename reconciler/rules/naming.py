"""Column-name -> field-name conventions. The rules pick one per entity; renames override it per column."""

from __future__ import annotations

from typing import Callable


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def identity(name: str) -> str:
    return name


CONVENTIONS: dict[str, Callable[[str], str]] = {
    "camelCase": snake_to_camel,
    "identity": identity,
}
