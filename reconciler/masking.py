"""Personal data out of reports that leave the machine (e-mail): values of matching field paths are masked.

Masking works on the report dict (`report.to_dict`), so the e-mail's text and HTML parts, and anything else
rendered from the masked dict, show the same masked values. A field path matches a pattern when the
pattern, case-insensitively, is a substring of it (`email` masks `email`, `emailLowercase`,
`contact.email`) or, if it has glob characters, matches it whole (`*.name`). Paths of subdocuments are
matched with their collection in front (`CHILD/street`), so a pattern naming a subcollection masks every
field of it. Nested values are masked by their own paths (`links.x` holding {"email": ...}).
The path, and whether a value is absent, stay visible: the reader still sees which field differs.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Iterable

MASKED = "•••• (masked)"


class Mask:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(p.lower() for p in patterns if p.strip())

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: str) -> bool:
        path = path.lower()
        return any(fnmatch.fnmatchcase(path, p) if any(c in p for c in "*?[") else p in path for p in self.patterns)

    def value(self, path: str, value: Any) -> Any:
        """`value` at `path`, masked where the path (or a nested key's path) matches; None stays None."""
        if value is None:
            return None
        if self.matches(path):
            return MASKED
        if isinstance(value, dict):
            return {k: self.value(f"{path}.{k}" if path and not path.endswith("/") else f"{path}{k}", v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(path, v) for v in value]
        return value


def _prefix(key: str) -> str:
    """PARENT/<id>/CHILD/<cid> -> "CHILD/": subdocument paths are matched with their collection."""
    parts = key.split("/")
    return f"{parts[-2]}/" if len(parts) > 2 else ""


def mask_report(report: dict[str, Any], patterns: Iterable[str]) -> dict[str, Any]:
    """A copy of `report` (the `report.to_dict` shape) with personal values masked; the input is not changed."""
    mask = Mask(patterns)
    out = copy.deepcopy(report)
    if not mask:
        return out
    for entity in out.get("entities") or ():
        for finding in entity.get("findings") or ():
            prefix = _prefix(str(finding.get("key", "")))
            for d in finding.get("fields") or ():
                path = prefix + str(d.get("path", ""))
                d["postgres"], d["firestore"] = mask.value(path, d.get("postgres")), mask.value(path, d.get("firestore"))
            repair = finding.get("repair")
            if isinstance(repair, dict):  # the planned writes and a deleted record's copy hold values too
                repair["writes"] = [_mask_write(mask, prefix, w) for w in repair.get("writes") or ()]
                if "deleted" in repair:
                    repair["deleted"] = mask.value(prefix, repair["deleted"])
    return out


def _mask_write(mask: Mask, prefix: str, write: Any) -> Any:
    """A planned write: where it goes (side, op, path, table, key) stays; the values it writes are masked."""
    if not isinstance(write, dict):
        return mask.value(prefix, write)
    out = dict(write)
    for k in ("set", "values", "document"):
        if k in out:
            out[k] = mask.value(prefix, out[k])
    return out
