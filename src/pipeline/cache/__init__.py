"""Success-only caching of stage outputs, so a rerun resumes after the last failure.

`PipelineExecutor(cache=SQLiteCache("runs.db"))` turns it on; `RedisCache(url)` shares one cache
between processes on several hosts, and either can keep large outputs as content-addressed
files (`artifacts=`, `_artifacts`). Stores implement the small `CacheStore` protocol; keys come from `fingerprint` (pure, in `_key`); values are JSON through
pydantic unless you pass `cache_serializer=PickleSerializer()`. Re-exports only; the errors are
defined in `pipeline.errors`.
"""

from pipeline.cache._artifacts import ArtifactGcReport
from pipeline.cache._gc import describe_gc, gc_store_artifacts, run_cache_gc
from pipeline.cache._key import (
    CacheKey,
    canonical_json,
    code_fingerprint,
    fingerprint,
    make_key,
)
from pipeline.cache._redis import RedisCache
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
    "ArtifactGcReport",
    "CacheError",
    "CacheKey",
    "CacheStats",
    "CacheStore",
    "JsonSerializer",
    "MemoryCache",
    "OverBudgetError",
    "PickleSerializer",
    "RedisCache",
    "SQLiteCache",
    "Serializer",
    "UncacheableOutputError",
    "UnfingerprintableError",
    "canonical_json",
    "code_fingerprint",
    "describe_gc",
    "fingerprint",
    "gc_store_artifacts",
    "make_key",
    "output_type_of",
    "run_cache_gc",
]
