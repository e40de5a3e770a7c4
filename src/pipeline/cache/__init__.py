"""Success-only caching of stage outputs, so a rerun resumes after the last failure.

`PipelineExecutor(cache=SQLiteCache("runs.db"))` turns it on. Stores implement the small
`CacheStore` protocol; keys come from `fingerprint` (pure, in `_key`); values are JSON through
pydantic unless you pass `cache_serializer=PickleSerializer()`. Re-exports only; the errors are
defined in `pipeline.errors`.
"""

from pipeline.cache._key import (
    CacheKey,
    canonical_json,
    code_fingerprint,
    fingerprint,
    make_key,
)
from pipeline.cache._serialize import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    output_type_of,
)
from pipeline.cache._sqlite import SQLiteCache
from pipeline.cache._store import CacheStore, MemoryCache
from pipeline.errors import (
    CacheError,
    OverBudgetError,
    UncacheableOutputError,
    UnfingerprintableError,
)
from pipeline.result import CacheStats

__all__ = [
    "CacheError",
    "CacheKey",
    "CacheStats",
    "CacheStore",
    "JsonSerializer",
    "MemoryCache",
    "OverBudgetError",
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
