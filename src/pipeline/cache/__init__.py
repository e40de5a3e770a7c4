"""Success-only caching of stage outputs, so a rerun resumes after the last failure.

`PipelineExecutor(cache=SQLiteCache("runs.db"))` turns it on. Stores implement the small
`CacheStore` protocol; keys come from `fingerprint` (pure, in `_key`); values are JSON through
pydantic unless you pass `cache_serializer=PickleSerializer()`. Re-exports only.
"""

from pipeline.cache._key import (
    CacheKey,
    UnfingerprintableError,
    canonical_json,
    code_fingerprint,
    fingerprint,
    make_key,
)
from pipeline.cache._serialize import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    UncacheableOutputError,
    output_type_of,
)
from pipeline.cache._sqlite import SQLiteCache
from pipeline.cache._store import CacheError, CacheStore, MemoryCache
from pipeline.result import CacheStats

__all__ = [
    "CacheError",
    "CacheKey",
    "CacheStats",
    "CacheStore",
    "JsonSerializer",
    "MemoryCache",
    "PickleSerializer",
    "SQLiteCache",
    "Serializer",
    "UncacheableOutputError",
    "UnfingerprintableError",
    "canonical_json",
    "code_fingerprint",
    "fingerprint",
    "make_key",
    "output_type_of",
]
