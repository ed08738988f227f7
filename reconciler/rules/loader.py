"""YAML rules -> EntityRules. Every error names the file and the line (ruamel.yaml keeps them)."""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any, Callable

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from reconciler.errors import RulesError
from reconciler.rules.model import (
    Changed,
    Column,
    CompareOptions,
    DocumentSpec,
    Embed,
    EntityRules,
    GeoPointRule,
    Path,
    Reference,
)
from reconciler.rules.naming import CONVENTIONS

TOP_KEYS = {"entity", "description", "source_of_truth", "naming", "compare", "collection", "table", "key",
            "columns", "geopoints", "embed", "subcollections", "parent", "parent_collection", "parent_references",
            "changed"}
CHANGED_KEYS = {"column", "field"}
COMPARE_KEYS = {"null_equals_absent", "number_tolerance"}
EMBED_KEYS = {"table", "join", "as", "into", "columns", "geopoints", "order_by", "map_key", "set_key", "description",
              "join_references", "where"}
SUB_KEYS = {"collection", "table", "key", "parent", "parent_references", "columns", "geopoints", "description"}
COLUMN_KEYS = {"field", "ignore", "tolerance", "type", "references", "json"}
JSON_KEYS = {"timestamps"}
JSON_TIMESTAMPS = ("iso",)
REFERENCE_KEYS = {"table", "column", "join"}
GEO_KEYS = {"field", "latitude", "longitude", "tolerance"}
EMBED_KINDS = ("one", "latest", "map", "set")
TYPES = ("decimal_string", "timestamp", "date", "string", "number", "json")


class _Ctx:
    """The file being read, and the helpers that turn a node position into a located error."""

    def __init__(self, file: str, naming: Callable[[str], str]) -> None:
        self.file = file
        self.naming = naming

    def error(self, message: str, line: int | None) -> RulesError:
        return RulesError(message, file=self.file, line=line)

    def line_of(self, node: Any, key: Any = None) -> int | None:
        lc = getattr(node, "lc", None)
        if lc is None:
            return None
        if key is None:
            return lc.line + 1
        try:
            return (lc.key(key) if isinstance(node, CommentedMap) else lc.item(key))[0] + 1
        except (KeyError, IndexError, TypeError):
            return lc.line + 1

    def mapping(self, node: Any, what: str, allowed: set[str], line: int | None, required: tuple[str, ...] = ()) -> CommentedMap:
        if not isinstance(node, CommentedMap):
            raise self.error(f"{what} must be a mapping, got {type(node).__name__}", line)
        for key in node:
            if key not in allowed:
                raise self.error(f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})", self.line_of(node, key))
        for key in required:
            if node.get(key) in (None, ""):
                raise self.error(f"{what} needs {key!r}", self.line_of(node))
        return node

    def string(self, node: CommentedMap, key: str, what: str, default: str | None = None) -> str | None:
        value = node.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(f"{what}.{key} must be a string, got {value!r}", self.line_of(node, key))
        return value

    def number(self, node: CommentedMap, key: str, what: str) -> float | None:
        value = node.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise self.error(f"{what}.{key} must be a non-negative number, got {value!r}", self.line_of(node, key))
        return float(value)

    def seq(self, node: CommentedMap, key: str, what: str) -> CommentedSeq:
        value = node.get(key)
        if value is None:
            return CommentedSeq()
        if not isinstance(value, CommentedSeq):
            raise self.error(f"{what}.{key} must be a list", self.line_of(node, key))
        return value


def _path(text: str, ctx: _Ctx, line: int | None) -> Path:
    parts = tuple(text.split("."))
    if not text or any(not p for p in parts):
        raise ctx.error(f"invalid field path {text!r}", line)
    return parts


def _reference(node: CommentedMap, key: str, what: str, ctx: _Ctx) -> Reference | None:
    """`TABLE.COLUMN` (joined on TABLE.id) or {table, column, join}."""
    value = node.get(key)
    if value is None:
        return None
    line = ctx.line_of(node, key)
    if isinstance(value, str):
        table, dot, column = value.partition(".")
        if not dot or not table or not column or "." in column:
            raise ctx.error(f"{what}.{key} must be TABLE.COLUMN (the referenced table and the column holding the "
                            f"value the other side has) or {{table, column, join}}, got {value!r}", line)
        return Reference(table=table, column=column, join="id", line=line or 0)
    ctx.mapping(value, f"{what}.{key}", REFERENCE_KEYS, line, required=("table", "column"))
    return Reference(table=ctx.string(value, "table", f"{what}.{key}") or "",
                     column=ctx.string(value, "column", f"{what}.{key}") or "",
                     join=ctx.string(value, "join", f"{what}.{key}", "id") or "id", line=line or 0)


def _where(node: CommentedMap, what: str, ctx: _Ctx) -> tuple[tuple[str, str], ...]:
    value = node.get("where")
    if value is None:
        return ()
    line = ctx.line_of(node, "where")
    if not isinstance(value, CommentedMap) or not value:
        raise ctx.error(f"{what}.where must be a non-empty mapping of column -> value", line)
    out = []
    for column, v in value.items():
        if not isinstance(column, str) or isinstance(v, (dict, list)) or v is None:
            raise ctx.error(f"{what}.where.{column}: a column name and one scalar value, got {v!r}",
                            ctx.line_of(value, column))
        out.append((column, str(v).lower() if isinstance(v, bool) else str(v)))
    return tuple(out)


def _columns(section: CommentedMap, what: str, ctx: _Ctx) -> tuple[Column, ...]:
    raw = section.get("columns")
    if raw is None:
        return ()
    if not isinstance(raw, CommentedMap):
        raise ctx.error(f"{what}.columns must be a mapping of column name -> options", ctx.line_of(section, "columns"))
    columns = []
    for name, opts in raw.items():
        line = ctx.line_of(raw, name)
        if not isinstance(name, str) or not name:
            raise ctx.error(f"column names must be strings, got {name!r}", line)
        if opts is None:
            opts = CommentedMap()
        elif isinstance(opts, str):  # `column: field.path` is a rename
            opts = CommentedMap(field=opts)
        colwhat = f"{what}.columns.{name}"
        ctx.mapping(opts, colwhat, COLUMN_KEYS, line)
        ignore = opts.get("ignore", False)
        if not isinstance(ignore, bool):
            raise ctx.error(f"{colwhat}.ignore must be true or false", line)
        conv = ctx.string(opts, "type", colwhat)
        if conv is not None and conv not in TYPES:
            raise ctx.error(f"{colwhat}.type must be one of {', '.join(TYPES)}, got {conv!r}", line)
        field = ctx.string(opts, "field", colwhat) or ctx.naming(name)
        columns.append(Column(name=name, path=_path(field, ctx, line), line=line or 0, ignore=ignore,
                              tolerance=ctx.number(opts, "tolerance", colwhat), type=conv,
                              references=_reference(opts, "references", colwhat, ctx),
                              json_timestamps=_json_timestamps(opts, colwhat, conv, ctx)))
    return tuple(columns)


def _json_timestamps(opts: CommentedMap, what: str, conv: str | None, ctx: _Ctx) -> Any:
    """`json: {timestamps: iso}`: inside this JSON column, ISO-8601 text with a zone is an instant."""
    node = opts.get("json")
    if node is None:
        return None
    line = ctx.line_of(opts, "json")
    ctx.mapping(node, f"{what}.json", JSON_KEYS, line, required=("timestamps",))
    value = node.get("timestamps")
    if value not in JSON_TIMESTAMPS:
        raise ctx.error(f"{what}.json.timestamps must be one of {', '.join(JSON_TIMESTAMPS)}, got {value!r}",
                        ctx.line_of(node, "timestamps"))
    if conv not in (None, "json"):
        raise ctx.error(f"{what}.json applies to JSON values, not to `type: {conv}`", line)
    return value


def _geopoints(section: CommentedMap, what: str, ctx: _Ctx) -> tuple[GeoPointRule, ...]:
    out = []
    items = ctx.seq(section, "geopoints", what)
    for i, item in enumerate(items):
        line = ctx.line_of(items, i)
        gwhat = f"{what}.geopoints[{i}]"
        ctx.mapping(item, gwhat, GEO_KEYS, line, required=("field", "latitude", "longitude"))
        out.append(GeoPointRule(path=_path(ctx.string(item, "field", gwhat) or "", ctx, line),
                                latitude=ctx.string(item, "latitude", gwhat) or "",
                                longitude=ctx.string(item, "longitude", gwhat) or "", line=line or 0,
                                tolerance=ctx.number(item, "tolerance", gwhat)))
    return tuple(out)


def _embed(node: Any, index: int, items: CommentedSeq, ctx: _Ctx) -> Embed:
    line = ctx.line_of(items, index)
    what = f"embed[{index}]"
    ctx.mapping(node, what, EMBED_KEYS, line, required=("table", "join", "as", "into"))
    kind = node["as"]
    if kind not in EMBED_KINDS:
        raise ctx.error(f"{what}.as must be one of {', '.join(EMBED_KINDS)}, got {kind!r}", ctx.line_of(node, "as"))
    what = f"embed {node['table']!r}"
    set_key = node.get("set_key") or ()
    if isinstance(set_key, str):
        set_key = (set_key,)
    if not isinstance(set_key, (list, tuple)) or not all(isinstance(k, str) and k for k in set_key):
        raise ctx.error(f"{what}.set_key must be a column name or a list of them, got {set_key!r}",
                        ctx.line_of(node, "set_key"))
    embed = Embed(table=ctx.string(node, "table", what) or "", join=ctx.string(node, "join", what) or "", kind=kind,
                  into=_path(ctx.string(node, "into", what) or "", ctx, ctx.line_of(node, "into")),
                  columns=_columns(node, what, ctx), geopoints=_geopoints(node, what, ctx), line=line or 0,
                  order_by=ctx.string(node, "order_by", what), map_key=ctx.string(node, "map_key", what),
                  set_key=tuple(str(k) for k in set_key),
                  join_references=_reference(node, "join_references", what, ctx), where=_where(node, what, ctx))
    needs = {"latest": "order_by", "map": "map_key", "set": "set_key"}.get(kind)
    if needs and not getattr(embed, needs):
        raise ctx.error(f"{what} is `as: {kind}` and needs {needs!r}", line)
    for other, name in (("order_by", "latest"), ("map_key", "map"), ("set_key", "set")):
        if node.get(other) and kind != name:
            raise ctx.error(f"{what}.{other} only applies to `as: {name}`", ctx.line_of(node, other))
    mapped = {c.name for c in embed.columns}
    for k in embed.set_key:
        if k not in mapped:
            raise ctx.error(f"{what}.set_key column {k!r} must also be listed under columns", ctx.line_of(node, "set_key"))
    for k, _ in embed.where:
        if k in mapped or k == embed.join:
            raise ctx.error(f"{what}.where column {k!r} is also mapped or joined: a filtered column has one value "
                            "and is not compared", ctx.line_of(node, "where"))
    return embed


def _subcollection(node: Any, index: int, items: CommentedSeq, ctx: _Ctx) -> DocumentSpec:
    line = ctx.line_of(items, index)
    what = f"subcollections[{index}]"
    ctx.mapping(node, what, SUB_KEYS, line, required=("collection", "table", "key", "parent"))
    what = f"subcollection {node['collection']!r}"
    return DocumentSpec(collection=ctx.string(node, "collection", what) or "", table=ctx.string(node, "table", what) or "",
                        key=ctx.string(node, "key", what) or "", parent=ctx.string(node, "parent", what),
                        parent_references=_reference(node, "parent_references", what, ctx),
                        columns=_columns(node, what, ctx), geopoints=_geopoints(node, what, ctx), line=line or 0)


def _check_targets(doc: DocumentSpec, ctx: _Ctx) -> None:
    """Two columns mapped to one field, or a field that is both a value and a map: ambiguous, so an error."""
    targets: dict[Path, int] = {}  # full field path -> line

    def claim(path: Path, line: int) -> None:
        if path in targets:
            raise ctx.error(f"field {'.'.join(path)!r} (collection {doc.collection!r}) is mapped twice "
                            f"(first at line {targets[path]})", line)
        targets[path] = line

    def claim_all(base: Path, columns: tuple[Column, ...], geopoints: tuple[GeoPointRule, ...]) -> None:
        for path, line in [(c.path, c.line) for c in columns] + [(g.path, g.line) for g in geopoints]:
            claim(base + path, line)

    claim_all((), doc.columns, doc.geopoints)
    for embed in doc.embeds:
        if embed.kind in ("one", "latest"):
            claim_all(embed.into, embed.columns, embed.geopoints)
        else:  # a map or set owns its whole subtree; its element fields live in their own namespace
            claim(embed.into, embed.line)
            targets_before = dict(targets)
            targets.clear()
            claim_all((), embed.columns, embed.geopoints)
            _check_prefixes(targets, ctx)
            targets.clear()
            targets.update(targets_before)
    _check_prefixes(targets, ctx)
    for name, cols in [(doc.table, doc.columns)] + [(e.table, e.columns) for e in doc.embeds]:
        seen: dict[str, int] = {}
        for c in cols:
            if c.name in seen:
                raise ctx.error(f"column {name}.{c.name} is listed twice (first at line {seen[c.name]})", c.line)
            seen[c.name] = c.line


def _check_prefixes(targets: dict[Path, int], ctx: _Ctx) -> None:
    for path, line in targets.items():
        for n in range(1, len(path)):
            if path[:n] in targets:
                raise ctx.error(f"field {'.'.join(path)!r} is inside {'.'.join(path[:n])!r}, which line "
                                f"{targets[path[:n]]} maps as a value", line)


def _failing_node_line(exc: BaseException) -> int:
    """The line of the YAML node ruamel.yaml was constructing when it failed (its frames hold it as `node`)."""
    line, tb = 1, exc.__traceback__
    while tb is not None:
        mark = getattr(tb.tb_frame.f_locals.get("node"), "start_mark", None)
        if mark is not None:
            line = mark.line + 1
        tb = tb.tb_next
    return line


def decode(data: bytes, file: str) -> str:
    """A rules file's bytes as text: UTF-8, or a RulesError at the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(f"not UTF-8: byte {exc.start} (0x{data[exc.start]:02x}) cannot be decoded ({exc.reason})",
                         file=file, line=data.count(b"\n", 0, exc.start) + 1) from None


def parse_entity(text: str | bytes, file: str, expected_entity: str | None = None) -> EntityRules:
    """Parse and validate one rules file's text or bytes (no database needed)."""
    if isinstance(text, bytes):
        text = decode(text, file)
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RulesError(f"invalid YAML: {exc.problem or exc}", file=file, line=mark.line + 1 if mark else 1) from None
    except ReaderError as exc:  # a character YAML does not allow: no mark, but its position in the text
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise RulesError(f"invalid YAML: character U+{char:04X} is not allowed", file=file,
                         line=text.count("\n", 0, max(exc.position, 0)) + 1) from None
    except YAMLError as exc:
        raise RulesError(f"invalid YAML: {' '.join(str(exc).split())}", file=file, line=1) from None
    except RecursionError:  # thousands of nested brackets
        raise RulesError("invalid YAML: nested too deeply", file=file, line=1) from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        # ruamel.yaml's constructors raise plain errors on some malformed tagged values (`key: !!int`)
        raise RulesError(f"invalid YAML: a value cannot be read ({type(exc).__name__}: {exc})", file=file,
                         line=_failing_node_line(exc)) from None
    ctx = _Ctx(file, CONVENTIONS["camelCase"])
    if data is None:
        raise ctx.error("the file is empty", 1)
    ctx.mapping(data, "the rules", TOP_KEYS, 1, required=("entity", "source_of_truth", "collection", "table", "key"))
    entity = ctx.string(data, "entity", "rules") or ""
    if expected_entity is not None and entity != expected_entity:
        raise ctx.error(f"entity is {entity!r} but the file is named for {expected_entity!r}", ctx.line_of(data, "entity"))
    naming = ctx.string(data, "naming", "rules", "camelCase") or "camelCase"
    if naming not in CONVENTIONS:
        raise ctx.error(f"naming must be one of {', '.join(CONVENTIONS)}, got {naming!r}", ctx.line_of(data, "naming"))
    ctx.naming = CONVENTIONS[naming]
    truth = data.get("source_of_truth")
    if truth not in ("postgres", "firestore"):
        raise ctx.error(f"source_of_truth must be 'postgres' or 'firestore', got {truth!r}", ctx.line_of(data, "source_of_truth"))
    compare_node = data.get("compare") or CommentedMap()
    ctx.mapping(compare_node, "compare", COMPARE_KEYS, ctx.line_of(data, "compare"))
    null_eq = compare_node.get("null_equals_absent", True)
    if not isinstance(null_eq, bool):
        raise ctx.error("compare.null_equals_absent must be true or false", ctx.line_of(compare_node, "null_equals_absent"))
    tolerance = ctx.number(compare_node, "number_tolerance", "compare")
    compare = CompareOptions(null_equals_absent=null_eq, number_tolerance=1e-9 if tolerance is None else tolerance)
    embeds = ctx.seq(data, "embed", "rules")
    subs = ctx.seq(data, "subcollections", "rules")
    parent, parent_collection = ctx.string(data, "parent", "rules"), ctx.string(data, "parent_collection", "rules")
    if (parent is None) != (parent_collection is None):
        raise ctx.error("a root collection that is a subcollection needs both `parent_collection` (its parents' "
                        "collection) and `parent` (the column holding the parent document's key)",
                        ctx.line_of(data, "parent" if parent is not None else "parent_collection"))
    if data.get("parent_references") is not None and parent is None:
        raise ctx.error("parent_references needs `parent`", ctx.line_of(data, "parent_references"))
    if parent is not None and subs:
        raise ctx.error("a root collection that is a subcollection (parent_collection) cannot have subcollections",
                        ctx.line_of(data, "subcollections"))
    root = DocumentSpec(collection=ctx.string(data, "collection", "rules") or "", table=ctx.string(data, "table", "rules") or "",
                        key=ctx.string(data, "key", "rules") or "", columns=_columns(data, "rules", ctx),
                        parent=parent, parent_collection=parent_collection,
                        parent_references=_reference(data, "parent_references", "rules", ctx),
                        geopoints=_geopoints(data, "rules", ctx), line=1,
                        embeds=tuple(_embed(e, i, embeds, ctx) for i, e in enumerate(embeds)))
    changed = None
    if data.get("changed") is not None:
        node = ctx.mapping(data["changed"], "changed", CHANGED_KEYS, ctx.line_of(data, "changed"),
                           required=("column", "field"))
        changed = Changed(column=ctx.string(node, "column", "changed") or "", field=ctx.string(node, "field", "changed") or "")
    rules = EntityRules(entity=entity, file=file, source_of_truth=truth, naming=naming, compare=compare, root=root,
                        subcollections=tuple(_subcollection(s, i, subs, ctx) for i, s in enumerate(subs)),
                        changed=changed)
    seen_collections: dict[str, int] = {}
    for doc in rules.documents:
        if not doc.columns and not doc.geopoints:
            raise ctx.error(f"collection {doc.collection!r} maps no columns", doc.line)
        if doc.collection in seen_collections:
            raise ctx.error(f"subcollection {doc.collection!r} is listed twice", doc.line)
        seen_collections[doc.collection] = doc.line
        _check_targets(doc, ctx)
    return rules


def load_entity(rules_dir: FsPath, entity: str) -> EntityRules:
    path = rules_dir / f"{entity}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in rules_dir.glob("*.yaml"))) or "none"
        raise RulesError(f"no rules for entity {entity!r} (looked for {path}; entities with rules: {known})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read the rules: {exc.strerror or exc}", file=str(path)) from None
    return parse_entity(data, str(path), expected_entity=entity)


def load_rules_dir(rules_dir: FsPath) -> dict[str, EntityRules]:
    return {p.stem: load_entity(rules_dir, p.stem) for p in sorted(rules_dir.glob("*.yaml"))}
