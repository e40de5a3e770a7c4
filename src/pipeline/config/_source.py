"""Reading a pipeline file into plain data, and the one map from data paths to lines and columns.

`read_source` decides what `load`'s argument is (a file or text, and its format); `parse` turns
the text into dicts, lists and scalars plus a `Locator`. Every error about the file goes
through `Locator.error`, so the line mapping lives only here: YAML positions come from
PyYAML's composed nodes (every key and value has a mark), JSON positions from a walk over the
(already valid) text, TOML positions from a line scan for the key (tomllib gives none; a TOML
syntax error carries its own). Lines and columns are 1-based. YAML merge keys (`<<: *base`)
are expanded here, keeping the merged nodes' own marks; tags on mappings and lists are refused
(they would be dropped silently). A key twice in one mapping is an error in every format.
"""

from __future__ import annotations

import json
import re
import tomllib
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

Format = Literal["yaml", "toml", "json"]
DataPath = tuple[str | int, ...]
Position = tuple[int, int]

SUFFIXES: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
TEXT_SOURCE = "<text>"
_MAX_DEPTH = 64
_MAX_NODES = 100_000
_FORMAT_FIX = 'pass format="yaml", "toml" or "json" (or a path ending in .yaml, .toml or .json)'


@dataclass
class Locator:
    """Where each key and value of a parsed document is, for errors that point at them."""

    source: str
    keys: dict[DataPath, Position] = field(default_factory=dict)
    values: dict[DataPath, Position] = field(default_factory=dict)
    quoted: dict[DataPath, bool] = field(default_factory=dict)
    """For one-line text values written verbatim (the source between the value's marks, less
    its quotes, is exactly the value: no escapes): whether a quote precedes the text."""
    fallback: Position | None = None
    """Used when nothing on the path is known (TOML and JSON text without positions)."""

    def position(self, path: DataPath, *, key: bool = False) -> Position | None:
        """The position of the value at `path` (its key with `key=True`), else of its parent."""
        for end in range(len(path), 0, -1):
            sub = path[:end]
            table = self.keys if key and end == len(path) else self.values
            found = table.get(sub) or self.keys.get(sub) or self.values.get(sub)
            if found is not None:
                return found
        return self.values.get((), self.fallback)

    def error(
        self,
        path: DataPath,
        problem: str,
        fix: str,
        *,
        key: bool = False,
        inside: tuple[int | None, int | None] = (None, None),
    ) -> ConfigError:
        """A `ConfigError` about the key or value at `path`.

        `inside` is a 1-based (line, column) within a text value (a CEL error's position);
        it is used when the value sits on one line and its source text is exactly the value
        (plain, or quoted without escapes), else the error points at the value.
        """
        where = self.position(path, key=key)
        line, column = where if where is not None else (None, None)
        quoted = self.quoted.get(path)
        at_line, at_column = inside
        if at_line is not None and at_column is not None and quoted is not None and where:
            line = where[0] + at_line - 1
            column = where[1] + int(quoted) + at_column - 1 if at_line == 1 else at_column
        return ConfigError(self.source, problem, fix, line=line, column=column)


def dotted(path: Sequence[str | int]) -> str:
    """`stages[0].retry_config.max_attempts` for `("stages", 0, "retry_config", ...)`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "the document"


def read_source(path_or_text: str | Path, fmt: str | None) -> tuple[str, str, Format]:
    """`(source, text, format)`: a `Path` or a `str` naming an existing file is read."""
    path: Path | None = None
    given: object = path_or_text  # checked at run time for callers without a type checker
    if isinstance(given, Path):
        path = given
    elif isinstance(given, str) and _names_a_file(given):
        path = Path(given)
    elif not isinstance(given, str):
        got = type(given).__name__
        raise ConfigError(TEXT_SOURCE, f"load() got a {got}", "pass a pathlib.Path or a str")
    if path is None:
        text = str(path_or_text)
        if fmt is None:
            looks = text.strip().endswith(tuple(SUFFIXES)) and "\n" not in text.strip()
            problem = "no such file" if looks else "text without a format"
            raise ConfigError(TEXT_SOURCE, problem, _FORMAT_FIX)
        return TEXT_SOURCE, text, _known_format(fmt, TEXT_SOURCE)
    source = str(path)
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            raise ConfigError(source, f"unknown file suffix {suffix!r}", _FORMAT_FIX)
        fmt = SUFFIXES[suffix]
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "no such file", "check the path") from None
    except OSError as exc:
        raise ConfigError(source, f"cannot read the file ({exc})", "check the path") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        problem = f"not UTF-8 text ({exc.reason})"
        raise ConfigError(source, problem, "save it as UTF-8", line=line, column=column) from None
    return source, text, _known_format(fmt, source)


def _names_a_file(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: text, not a path
        return False


def _known_format(fmt: str, source: str) -> Format:
    given: object = fmt
    lowered = given.lower() if isinstance(given, str) else ""
    if lowered == "yml":
        lowered = "yaml"
    if lowered not in ("yaml", "toml", "json"):
        raise ConfigError(source, f"unknown format {fmt!r}", _FORMAT_FIX)
    return lowered  # type: ignore[return-value]  # narrowed by the check above


def parse(text: str, fmt: Format, source: str) -> tuple[Any, Locator]:
    """The document as plain data, and where its parts are."""
    if fmt == "yaml":
        return _parse_yaml(text, source)
    if fmt == "json":
        return _parse_json(text, source)
    return _parse_toml(text, source)


# -- YAML ------------------------------------------------------------------------------------------
def _parse_yaml(text: str, source: str) -> tuple[Any, Locator]:
    try:
        import yaml  # type: ignore[import-untyped]  # no stubs; the yaml extra
    except ImportError:  # pragma: no cover - the yaml extra is part of the dev install
        fix = "pip install 'wavepipe[yaml]' (or write the file as TOML or JSON)"
        raise ConfigError(source, "reading YAML needs PyYAML", fix, line=1, column=1) from None
    locator = Locator(source, fallback=(1, 1))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = f"invalid YAML: {exc.problem or exc.context or 'cannot parse'}"
        fix = "fix the YAML syntax at this position"
        raise ConfigError(source, problem, fix, line=line, column=column) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        problem = f"invalid YAML: {' '.join(str(exc).split())[:200]}"
        raise ConfigError(source, problem, "fix the YAML syntax", line=1, column=1) from None
    if node is None:
        return None, locator
    constructor = yaml.SafeLoader("")
    walker = _YamlWalker(locator, constructor, yaml, text)
    return walker.walk(node, (), 0), locator


_MERGE_TAG = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = {"MappingNode": "tag:yaml.org,2002:map", "SequenceNode": "tag:yaml.org,2002:seq"}


class _YamlWalker:
    def __init__(self, locator: Locator, constructor: Any, yaml: Any, text: str) -> None:
        self.locator = locator
        self.constructor = constructor
        self.yaml = yaml
        self.text = text
        self.nodes = 0

    def walk(self, node: Any, path: DataPath, depth: int) -> Any:
        yaml = self.yaml
        mark = node.start_mark
        self.locator.values.setdefault(path, (mark.line + 1, mark.column + 1))
        self._count(1, path, depth)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self._plain_collection(node, path)
        if isinstance(node, yaml.MappingNode):
            chosen: dict[Any, tuple[Any, Any, bool]] = {}
            for key_node, value_node, merged in self._pairs(node, path, depth):
                key = self._scalar(key_node, path)
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise self.locator.error(path, "a mapping key is not a scalar", "use text keys")
                sub = (*path, key if isinstance(key, str | int) else str(key))
                if key in chosen and not merged and not chosen[key][2]:
                    k = key_node.start_mark
                    self.locator.keys[sub] = (k.line + 1, k.column + 1)
                    raise self.locator.error(
                        sub, f"duplicate key {key!r}", "keep one of them", key=True
                    )
                chosen[key] = (key_node, value_node, merged)  # a later one wins over a merged one
            out: dict[Any, Any] = {}
            for key, (key_node, value_node, _) in chosen.items():
                sub = (*path, key if isinstance(key, str | int) else str(key))
                k = key_node.start_mark
                self.locator.keys[sub] = (k.line + 1, k.column + 1)
                out[key] = self.walk(value_node, sub, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
        self._note_verbatim(node, path)
        return self._scalar(node, path)

    def _count(self, nodes: int, path: DataPath, depth: int) -> None:
        """Stop documents that aliases (or merges of aliases) blow up."""
        self.nodes += nodes
        if depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            raise self.locator.error(
                path, "the document is nested too deeply or too large (aliases?)",
                "write plain nested mappings and lists, without recursive aliases",
            )  # fmt: skip

    def _plain_collection(self, node: Any, path: DataPath) -> None:
        """Refuse tags on mappings and lists (`!!python/object`, `!!set`): they would be dropped."""
        expected = _COLLECTION_TAGS[type(node).__name__]
        if node.tag != expected:
            raise self.locator.error(
                path,
                f"the tag {node.tag!r} is not supported",
                "remove the tag: a pipeline file holds plain mappings, lists and scalars",
            )

    def _pairs(self, node: Any, path: DataPath, depth: int) -> list[tuple[Any, Any, bool]]:
        """A mapping's (key node, value node, from a merge) pairs, merge keys (`<<`) expanded.

        Merged pairs come first, so the mapping's own keys win over them, and of several merged
        mappings (`<<: [*a, *b]`) the first wins, as YAML's merge key defines. The nodes keep
        their marks: an error in a merged value points where that value is written.
        """
        merged: list[tuple[Any, Any, bool]] = []
        own: list[tuple[Any, Any, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node, False))
                continue
            seq = isinstance(value_node, self.yaml.SequenceNode)
            sources = list(reversed(value_node.value)) if seq else [value_node]
            for source in sources:
                self._count(len(source.value) if isinstance(source.value, list) else 1, path, depth)
                if not isinstance(source, self.yaml.MappingNode):
                    raise self.locator.error(
                        path,
                        "a merge key (<<) must be followed by a mapping or a list of mappings",
                        "merge an anchored mapping, e.g. <<: *defaults",
                    )
                self._plain_collection(source, path)
                merged += [(k, v, True) for k, v, _ in self._pairs(source, path, depth + 1)]
        return merged + own

    def _note_verbatim(self, node: Any, path: DataPath) -> None:
        """Record a one-line scalar whose source text is exactly its value (see `Locator`)."""
        start, end = node.start_mark, node.end_mark
        if start.line != end.line or node.style not in (None, "'", '"'):
            return
        quote = int(node.style is not None)
        if self.text[start.index + quote : end.index - quote] == node.value:
            self.locator.quoted[path] = bool(quote)

    def _scalar(self, node: Any, path: DataPath) -> Any:
        if not isinstance(node, self.yaml.ScalarNode):
            raise self.locator.error(path, "a mapping key is not a scalar", "use text keys")
        try:
            return self.constructor.construct_object(node, deep=True)
        except (self.yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            m = node.start_mark
            raise ConfigError(
                self.locator.source, f"invalid YAML value: {' '.join(str(exc).split())[:200]}",
                "quote the value to make it text", line=m.line + 1, column=m.column + 1,
            ) from None  # fmt: skip


# -- JSON ------------------------------------------------------------------------------------------
def _parse_json(text: str, source: str) -> tuple[Any, Locator]:
    duplicates: list[str] = []

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) < len(pairs):
            duplicates.extend(k for k in out if sum(key == k for key, _ in pairs) > 1)
        return out

    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        fix = "fix the JSON syntax at this position"
        raise ConfigError(
            source, f"invalid JSON: {exc.msg}", fix, line=exc.lineno, column=exc.colno
        ) from None
    except RecursionError:
        raise ConfigError(source, "invalid JSON: nested too deeply", "flatten it") from None
    locator = Locator(source)
    try:
        _JsonWalker(text, locator).walk_document()  # a duplicate key raises where it is
    except (ValueError, IndexError, RecursionError):  # pragma: no cover - json.loads accepted it
        locator.keys.clear()
    if duplicates:  # as in YAML: which one was meant is unknown (here: nested too deeply to walk)
        raise ConfigError(source, f"duplicate key {duplicates[0]!r}", "keep one of them")
    return data, locator


class _JsonWalker:
    """Records the position of every key and value of a valid JSON text."""

    _SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, text: str, locator: Locator) -> None:
        self.text = text
        self.locator = locator
        self.decoder = json.JSONDecoder()
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(self, index: int) -> Position:
        line = bisect_right(self.starts, index)
        return line, index - self.starts[line - 1] + 1

    def skip(self, index: int) -> int:
        match = self._SPACE.match(self.text, index)
        return match.end() if match else index

    def walk_document(self) -> None:
        self.walk(self.skip(0), (), 0)

    def walk(self, index: int, path: DataPath, depth: int) -> int:
        self.locator.values[path] = self.at(index)
        char = self.text[index]
        if depth > _MAX_DEPTH:
            _, end = self.decoder.raw_decode(self.text, index)
            return int(end)
        if char == "{":
            index = self.skip(index + 1)
            seen: set[str] = set()
            while self.text[index] != "}":
                key_at = index
                key, index = json.decoder.scanstring(self.text, index + 1)  # type: ignore[attr-defined]  # public but untyped
                sub = (*path, key)
                self.locator.keys[sub] = self.at(key_at)
                if key in seen:
                    raise self.locator.error(
                        sub, f"duplicate key {key!r}", "keep one of them", key=True
                    )
                seen.add(key)
                index = self.skip(self.skip(index) + 1)  # past the ':'
                index = self.skip(self.walk(index, sub, depth + 1))
                if self.text[index] == ",":
                    index = self.skip(index + 1)
            return index + 1
        if char == "[":
            index = self.skip(index + 1)
            i = 0
            while self.text[index] != "]":
                index = self.skip(self.walk(index, (*path, i), depth + 1))
                i += 1
                if self.text[index] == ",":
                    index = self.skip(index + 1)
            return index + 1
        value, end = self.decoder.raw_decode(self.text, index)
        if char == '"' and self.text[index + 1 : end - 1] == value:  # no escapes
            self.locator.quoted[path] = True
        return int(end)


# -- TOML ------------------------------------------------------------------------------------------
_TOML_WHERE = re.compile(r"\(at line (\d+), column (\d+)\)")
_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?")


def _parse_toml(text: str, source: str) -> tuple[Any, Locator]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        line, column = (int(where[1]), int(where[2])) if where else _end_of(text)
        problem = f"invalid TOML: {_TOML_WHERE.sub('', message).strip()}"
        fix = "fix the TOML syntax at this position"
        raise ConfigError(source, problem, fix, line=line, column=column) from None
    except RecursionError:
        raise ConfigError(source, "invalid TOML: nested too deeply", "flatten it") from None
    locator = Locator(source, fallback=None)
    _scan_toml(text, locator, data)
    return data, locator


def _end_of(text: str) -> Position:
    """The position just past the last character (where "at end of document" errors are)."""
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


_TOML_KEY_PART = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_TOML_KEY = re.compile(rf"\s*({_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*)\s*=\s*")
_TOML_KEY_PARTS = re.compile(_TOML_KEY_PART)


def _at(data: Any, path: DataPath) -> Any:
    """The value at `path` in parsed data, or None where the path does not lead anywhere."""
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _scan_toml(text: str, locator: Locator, data: Any) -> None:
    """Best effort: each `key =` line (dotted keys too), under the table header above it."""
    table: DataPath = ()
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TOML_HEADER.match(line)
        stripped = line.lstrip()
        if header and stripped.startswith("["):
            name = header[1].strip()
            parts: list[str | int] = [p.strip().strip("\"'") for p in name.split(".")]
            if stripped.startswith("[["):
                counts[name] = counts.get(name, -1) + 1
                parts.append(counts[name])
            elif parts and parts[0] in counts and len(parts) > 1:  # [stages.retry_config]
                parts.insert(1, counts[str(parts[0])])
            table = tuple(parts)
            locator.values.setdefault(table, (number, len(line) - len(stripped) + 1))
            continue
        key = _TOML_KEY.match(line)
        if key and not stripped.startswith("#"):
            names = [m[0].strip("\"'") for m in _TOML_KEY_PARTS.finditer(key[1])]
            for i, part in enumerate(_TOML_KEY_PARTS.finditer(key[1])):  # a.b = 1 defines a too
                locator.keys.setdefault(
                    (*table, *names[: i + 1]), (number, key.start(1) + 1 + part.start())
                )
            sub = (*table, *names)
            if sub not in locator.values:
                locator.values[sub] = (number, key.end() + 1)
                _note_toml_verbatim(line[key.end() :], _at(data, sub), sub, locator)


def _note_toml_verbatim(rest: str, value: Any, path: DataPath, locator: Locator) -> None:
    """Record a one-line quoted string whose source text is exactly its value (see `Locator`)."""
    quote = rest[:1]
    if quote not in ("'", '"') or rest[:3] in ('"""', "'''") or not isinstance(value, str):
        return
    if rest[1 : 1 + len(value)] == value and rest[1 + len(value) : 2 + len(value)] == quote:
        locator.quoted[path] = True
