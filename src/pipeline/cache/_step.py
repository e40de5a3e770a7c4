"""The cache step of one stage in one run: look up before the stage runs, store after it succeeds.

It turns every cache problem (unfingerprintable input, unreadable entry, failing store) into a
note on the run record and a plain miss, so the cache can never fail a run. Where the step sits
among the invocation steps (cache -> retry -> timeout -> execute) is `pipeline._invoke`'s call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from pipeline._cancel import raise_unless_stray
from pipeline._text import exception_text
from pipeline.cache._key import (
    INLINE_FINGERPRINT_NODES,
    OverBudgetError,
    UnfingerprintableError,
    code_fingerprint,
    fingerprint,
    make_key,
)
from pipeline.cache._serialize import UncacheableOutputError, output_type_of, seal, unseal
from pipeline.definition import ExecutionPattern
from pipeline.result import CacheStats

if TYPE_CHECKING:
    from pipeline.cache._key import CacheKey
    from pipeline.cache._serialize import Serializer
    from pipeline.cache._store import CacheStore
    from pipeline.definition import StageDefinition

logger = logging.getLogger("pipeline")

MAX_NOTES: Final = 20
"""Notes kept per stage and kind; a fan-out over many bad items reports the first ones."""


@dataclass(slots=True)
class CacheTally:
    """Cache counters of one run; it leaves as a frozen `CacheStats`."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    errors: int = 0
    uncacheable: int = 0

    def snapshot(self) -> CacheStats:
        """The frozen counters."""
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            writes=self.writes,
            errors=self.errors,
            uncacheable=self.uncacheable,
        )


class StageCache:
    """Looks up and stores the outputs of one stage (or of each of its fan-out items) in one run."""

    __slots__ = (
        "_disabled",
        "code",
        "errors",
        "hits",
        "item_level",
        "output_type",
        "pipeline",
        "serializer",
        "stage_id",
        "store",
        "tally",
        "version",
        "warnings",
    )

    def __init__(
        self,
        sdef: StageDefinition,
        store: CacheStore,
        serializer: Serializer,
        tally: CacheTally,
        pipeline: str = "",
    ) -> None:
        self.stage_id = sdef.id
        self.pipeline = pipeline
        self.store = store
        self.serializer = serializer
        self.tally = tally
        self.version = sdef.cache_version
        self.item_level = sdef.pattern is ExecutionPattern.FAN_OUT
        self.hits = 0
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.code: str | None = None
        self._disabled: str | None = None
        self.output_type: Any = Any
        try:
            self.output_type = output_type_of(sdef.stage, sdef.output_type)
            if sdef.cache_code_fingerprint:
                self.code = code_fingerprint(sdef.stage)
        except Exception as exc:  # noqa: BLE001  # a cache problem never fails a run
            self._disabled = f"not cached: {exception_text(exc)}"

    def _note(self, notes: list[str], item: int | None, message: str) -> None:
        text = message if item is None else f"item {item}: {message}"
        logger.warning("cache: stage %r %s", self.stage_id, text)
        if len(notes) < MAX_NOTES:
            notes.append(text)

    async def lookup(self, value: Any, item: int | None) -> tuple[bool, Any, CacheKey | None]:
        """`(True, output, key)` on a hit, `(False, None, key)` on a miss.

        The key is None when `value` cannot be fingerprinted: then nothing is stored either.
        """
        if self._disabled is not None:
            self.tally.uncacheable += 1
            self._note(self.warnings, item, self._disabled)
            return False, None, None
        try:
            digest = await fingerprint_off_loop(value)
        except UnfingerprintableError as exc:
            self.tally.uncacheable += 1
            self._note(self.warnings, item, f"not cached: {exc}")
            return False, None, None
        key = make_key(
            self.stage_id,
            digest,
            version=self.version,
            code=self.code,
            item=self.item_level,
            pipeline=self.pipeline,
        )
        try:
            blob = await self.store.get(key)
            if blob is None:
                self.tally.misses += 1
                return False, None, key
            output = self.serializer.loads(unseal(self.serializer, blob), self.output_type)
        except (Exception, anyio.get_cancelled_exc_class()) as exc:  # noqa: BLE001  # a miss
            if not isinstance(exc, Exception):
                await raise_unless_stray(exc)  # a stray one from the store is just a miss
            self.tally.misses += 1
            self.tally.errors += 1
            self._note(self.errors, item, f"read failed, recomputing: {exception_text(exc)}")
            return False, None, key
        self.tally.hits += 1
        self.hits += 1
        return True, output, key

    async def store_output(self, key: CacheKey, output: Any, item: int | None) -> None:
        """Store a successful output under `key`; problems become notes, never errors."""
        try:
            payload = self.serializer.dumps(output, self.output_type)
        except Exception as exc:  # noqa: BLE001  # an unstorable output is just not cached
            self.tally.uncacheable += 1
            if isinstance(exc, UncacheableOutputError):
                text = str(exc)
            else:
                text = f"output not cached: {exception_text(exc)}"
            self._note(self.warnings, item, text)
            return
        try:
            await self.store.put(key, seal(self.serializer, payload))
        except (Exception, anyio.get_cancelled_exc_class()) as exc:  # noqa: BLE001  # a note only
            if not isinstance(exc, Exception):
                await raise_unless_stray(exc)  # a stray one from the store is a failed write
            self.tally.errors += 1
            self._note(self.errors, item, f"write failed: {exception_text(exc)}")
            return
        self.tally.writes += 1


async def fingerprint_off_loop(value: Any) -> str:
    """`fingerprint(value)`, moved to a worker thread past `INLINE_FINGERPRINT_NODES` values.

    Raises:
        UnfingerprintableError: `value` has no stable fingerprint.
    """
    try:
        return fingerprint(value, budget=INLINE_FINGERPRINT_NODES)
    except OverBudgetError:  # a large value: hash it off the event loop
        return await anyio.to_thread.run_sync(fingerprint, value)
