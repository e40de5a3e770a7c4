"""Large cached values as content-addressed files ("artifacts") that a store's entries refer to.

A store configured with `artifacts=` keeps values longer than `artifact_threshold_bytes` as a
file named by the SHA-256 of its bytes and stores only a reference in the entry. Layout under
the root (a local directory, or any fsspec URL):

    ab/abcdef0123...                    the committed artifact (its sha256; 2 hex digits a folder)
    tmp/abcdef0123....<pid>-<rnd>.part  a write in progress, renamed into place once complete

The entry is written only after the rename, so a killed process leaves at worst a temp file (no
entry points at it; `gc` removes it later). A read checks size and hash: a damaged or missing
artifact raises `CacheError`, which a run turns into a recorded miss and a recompute.

Stored entries are encoded so the store stays byte-opaque: a reference starts with `REF_PREFIX`,
a plain value starting with a NUL byte gets one more NUL in front (values the executor writes
start with their serializer's name, so in practice nothing is escaped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from pipeline.errors import CacheError, DefinitionError

if TYPE_CHECKING:
    from collections.abc import Iterator

NUL: Final = b"\x00"
REF_PREFIX: Final = b"\x00pipeline-artifact\x00"
"""How a stored entry that refers to an artifact starts; `sha256:<hex>:<size>` follows."""

_SHA: Final = re.compile(r"[0-9a-f]{64}")
_TEMP: Final = re.compile(r"[0-9a-f]{64}\.\d+-[0-9a-f]+\.part")
"""A temp file's name, as `_write` makes it: `<sha256>.<pid>-<random hex>.part`."""
_FOLDER: Final = re.compile(r"tmp|[0-9a-f]{2}")
FSSPEC_HINT: Final = "pip install 'wavepipe[fsspec]'"
DEFAULT_THRESHOLD: Final = 1_048_576


@dataclasses.dataclass(frozen=True, slots=True)
class ArtifactGcReport:
    """What `gc_artifacts` removed from an artifact store.

    Attributes:
        removed: Paths of committed artifacts that no entry referred to.
        removed_temp: Paths of temp files left by writes that never finished.
        kept: How many artifacts are still referenced (or too young to remove).
        freed_bytes: The size of everything removed.
    """

    removed: tuple[str, ...] = ()
    removed_temp: tuple[str, ...] = ()
    kept: int = 0
    freed_bytes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Ref:
    sha: str
    size: int


def referenced_sha(stored: bytes) -> str | None:
    """The artifact hash a stored entry refers to, or None for an inline value."""
    ref = _parse_ref(stored) if stored.startswith(REF_PREFIX) else None
    return None if ref is None else ref.sha


def _parse_ref(stored: bytes) -> _Ref | None:
    try:
        kind, sha, size = stored[len(REF_PREFIX) :].decode("ascii").split(":")
        if kind == "sha256" and _SHA.fullmatch(sha):
            return _Ref(sha, int(size))
    except (UnicodeDecodeError, ValueError):
        pass
    return None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _modified(info: dict[str, Any]) -> float | None:
    """An fsspec listing entry's modification time (filesystems name it differently)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _our_folder(name: str) -> bool:
    """Whether a folder right under the root is one this layout makes."""
    return _FOLDER.fullmatch(name) is not None


class Artifacts:
    """The artifact side of one store: encodes entries, writes, reads and collects files.

    Args:
        owner: The store's repr, for error messages.
        location: A local directory, an fsspec URL (`"s3://bucket/cache"`), or None for none:
            then every value is kept inline.
        threshold: Values longer than this many bytes become artifacts.
    """

    def __init__(self, owner: str, location: str | os.PathLike[str] | None, threshold: int) -> None:
        given: object = threshold  # checked at run time: callers may pass anything
        if isinstance(given, bool) or not isinstance(given, int) or given < 0:
            raise DefinitionError(
                owner, "artifact_threshold_bytes", f"is {threshold!r}", "use an int >= 0"
            )
        if location is not None and not isinstance(location, str | os.PathLike):
            raise DefinitionError(
                owner, "artifacts", f"is {location!r}", "use a directory path or an fsspec URL"
            )
        self.owner = owner
        self.threshold = threshold
        self.location = None if location is None else os.fspath(location)
        self._fs: Any = None  # an fsspec filesystem for URLs; None for a local directory
        self.root = ""
        if self.location is None:
            return
        if "://" in self.location:
            try:
                import fsspec  # type: ignore[import-untyped]  # the extra, only when a URL asks
            except ImportError as exc:
                msg = f"{owner}: artifacts={self.location!r} needs fsspec: {FSSPEC_HINT}"
                raise ImportError(msg) from exc
            self._fs, self.root = fsspec.core.url_to_fs(self.location)
            self.root = self.root.rstrip("/")
            if set(_protocols(self._fs)) & {"file", "local", "memory"}:  # no network: create now
                with contextlib.suppress(Exception):
                    self._fs.makedirs(self.root, exist_ok=True)
        else:
            self.root = os.path.abspath(self.location)
            with contextlib.suppress(OSError):  # an unwritable place fails each write instead
                os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Artifacts({self.location!r}, threshold={self.threshold})"

    # -- entry encoding ---------------------------------------------------------------------------
    def takes(self, value: bytes) -> bool:
        """Whether `value` would be written as an artifact."""
        return self.location is not None and len(value) > self.threshold

    async def pack(self, value: bytes, key: str | None) -> bytes:
        """What the store keeps for `value`: the value itself, or a reference to its artifact."""
        if self.takes(value):
            ref = await anyio.to_thread.run_sync(self._write, value, key)
            return REF_PREFIX + f"sha256:{ref.sha}:{ref.size}".encode("ascii")
        return NUL + value if value.startswith(NUL) else value

    async def unpack(self, stored: bytes, key: str | None) -> bytes:
        """The value behind a stored entry; `CacheError` for a damaged or missing artifact."""
        if not stored.startswith(NUL):
            return stored
        if not stored.startswith(REF_PREFIX):
            return stored[1:]
        ref = _parse_ref(stored)
        if ref is None:
            raise CacheError(self.owner, key, "corrupt artifact reference in the entry")
        if self.location is None:
            raise CacheError(
                self.owner,
                key,
                f"the entry refers to artifact {ref.sha[:12]}, but the store has no artifacts= "
                "location; open it with the artifact directory it was written with",
            )
        return await anyio.to_thread.run_sync(self._read, ref, key)

    # -- files (worker threads) -------------------------------------------------------------------
    def path_of(self, sha: str) -> str:
        """Where the artifact with hash `sha` is committed."""
        return f"{self.root}/{sha[:2]}/{sha}"

    def _write(self, value: bytes, key: str | None) -> _Ref:
        sha = hashlib.sha256(value).hexdigest()
        final = self.path_of(sha)
        tmp = f"{self.root}/tmp/{sha}.{os.getpid()}-{secrets.token_hex(4)}.part"
        try:
            if self._fs is None:
                os.makedirs(os.path.dirname(tmp), exist_ok=True)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                with open(tmp, "wb") as out:
                    out.write(value)
                os.replace(tmp, final)  # atomic: readers see the whole file or none
            else:
                self._fs.makedirs(f"{self.root}/tmp", exist_ok=True)
                self._fs.makedirs(os.path.dirname(final), exist_ok=True)
                with self._fs.open(tmp, "wb") as out:
                    out.write(value)
                self._fs.mv(tmp, final)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._remove(tmp)
            error = CacheError(
                self.owner, key, f"cannot write artifact to {self.location!r}: {exc}"
            )
            raise error from exc
        return _Ref(sha, len(value))

    def _read(self, ref: _Ref, key: str | None) -> bytes:
        path = self.path_of(ref.sha)
        try:
            local = self._fs is None
            data = Path(path).read_bytes() if local else bytes(self._fs.cat_file(path))
        except FileNotFoundError as exc:
            raise CacheError(self.owner, key, f"artifact {path} is missing") from exc
        except Exception as exc:
            raise CacheError(self.owner, key, f"cannot read artifact {path}: {exc}") from exc
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha:
            raise CacheError(
                self.owner,
                key,
                f"artifact {path} is damaged ({len(data)} bytes, expected {ref.size} "
                "with a matching sha256)",
            )
        return data

    def _remove(self, path: str) -> None:
        if self._fs is None:
            os.unlink(path)
        else:
            self._fs.rm_file(path)

    def _listing(self) -> Iterator[tuple[str, str, str, int, float | None]]:
        """(path, folder, name, size, modified) of the files of our layout's two folder kinds.

        `folder` is the path's one folder under the root (`tmp` or two hex digits); nothing
        deeper or elsewhere is listed, so other files under the root are never touched.
        """
        if self._fs is None:
            try:
                folders = [e.name for e in os.scandir(self.root) if _our_folder(e.name)]
            except FileNotFoundError:
                return
            for folder in folders:
                try:
                    entries = list(os.scandir(os.path.join(self.root, folder)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        if entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            yield entry.path, folder, entry.name, st.st_size, st.st_mtime
            return
        if not self._fs.exists(self.root):
            return
        prefix = self.root + "/"
        for path, info in self._fs.find(self.root, detail=True).items():
            text = str(path)
            if not text.startswith(prefix):
                continue
            parts = text[len(prefix) :].split("/")
            if len(parts) == 2 and _our_folder(parts[0]):
                yield text, parts[0], parts[1], int(info.get("size") or 0), _modified(info)

    def gc(
        self, referenced: set[str], grace_s: float, now: float | None = None
    ) -> ArtifactGcReport:
        """Remove unreferenced artifacts and stale temp files older than `grace_s` (sync).

        Files younger than the grace period are kept even when unreferenced: a write in
        progress commits its artifact before the entry that refers to it. Only files of this
        layout are considered (`<root>/<sha[:2]>/<sha>` and `<root>/tmp/<sha>.<pid>-<rnd>.part`);
        anything else under the root is left alone.
        """
        if self.location is None:
            raise CacheError(self.owner, None, "no artifact store: the store has no artifacts=")
        now = time.time() if now is None else now
        removed: list[str] = []
        removed_temp: list[str] = []
        kept = freed = 0
        for path, folder, name, size, modified in self._listing():
            old = modified is not None and now - modified > grace_s
            if folder == "tmp":
                if not _TEMP.fullmatch(name):
                    continue  # not ours: leave it alone
                doomed = removed_temp if old else None
            elif _SHA.fullmatch(name) and folder == name[:2]:
                if name in referenced or not old:
                    kept += 1
                    continue
                doomed = removed
            else:
                continue  # not ours: leave it alone
            if doomed is None:
                continue
            try:
                self._remove(path)
            except FileNotFoundError:
                continue  # someone else collected it
            doomed.append(path)
            freed += size
        return ArtifactGcReport(tuple(removed), tuple(removed_temp), kept, freed)
