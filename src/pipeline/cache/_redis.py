"""`RedisCache`: a `CacheStore` on a Redis server, shared by processes on several hosts.

The `redis` client library's sync client runs in anyio worker threads, so the store works on
asyncio and trio alike (the library's asyncio client would tie it to asyncio). As in the SQLite
store, operations that arrive while a worker-thread trip is under way ride together on the next
one, here as one pipelined round trip to the server. Every operation is a single command (a
Lua script where it touches several keys), so each is atomic on the server: a reader sees an
entry whole or not at all, and processes sharing the server lose nothing.

Keys of namespace `ns`: `ns:e:<digest>` is an entry (a hash: value, stage id, creation time),
`ns:s:<stage id>` the set of a stage's digests, `ns:stages` the set of stage ids and
`ns:written` a marker that the namespace has been written (what tells `gc_artifacts` an emptied
namespace from a misspelt one). A namespace has no `:`, so the first `:` of a key ends it and
two namespaces never share a key. `clear`, `count` and `invalidate` walk these sets, so they
touch nothing outside their namespace.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import anyio
import anyio.to_thread

from pipeline.cache._artifacts import DEFAULT_THRESHOLD, NUL, REF_PREFIX, Artifacts, referenced_sha
from pipeline.cache._batch import Job, TripBatcher
from pipeline.cache._store import CacheError, _check_ttl
from pipeline.errors import DefinitionError

if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from types import TracebackType

    from pipeline.cache._artifacts import ArtifactGcReport
    from pipeline.cache._key import CacheKey

T = TypeVar("T")

logger = logging.getLogger("pipeline")

REDIS_HINT: Final = "pip install 'wavepipe[redis]'"

_PUT: Final = """
redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2], 't', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], '1')
if tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""

_DELETE: Final = """
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
"""

_INVALIDATE: Final = """
local n = 0
for _, d in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. 'e:' .. d)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return n
"""

_CLEAR: Final = """
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sk = ARGV[1] .. 's:' .. s
  for _, d in ipairs(redis.call('SMEMBERS', sk)) do
    redis.call('DEL', ARGV[1] .. 'e:' .. d)
  end
  redis.call('DEL', sk)
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1')
return 1
"""

# ARGV: prefix, oldest creation time ('' for no TTL), '1' to count one stage, its id
_COUNT: Final = """
local stages
if ARGV[3] == '1' then stages = {ARGV[4]} else stages = redis.call('SMEMBERS', KEYS[1]) end
local n = 0
for _, s in ipairs(stages) do
  for _, d in ipairs(redis.call('SMEMBERS', ARGV[1] .. 's:' .. s)) do
    local t = redis.call('HGET', ARGV[1] .. 'e:' .. d, 't')
    if t and (ARGV[2] == '' or tonumber(t) >= tonumber(ARGV[2])) then n = n + 1 end
  end
end
return n
"""

# ARGV: prefix, oldest creation time ('' for no TTL); drops expired entries and stale index members
_PURGE: Final = """
local n = 0
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sk = ARGV[1] .. 's:' .. s
  for _, d in ipairs(redis.call('SMEMBERS', sk)) do
    local k = ARGV[1] .. 'e:' .. d
    local t = redis.call('HGET', k, 't')
    if not t then
      redis.call('SREM', sk, d)
    elseif ARGV[2] ~= '' and tonumber(t) < tonumber(ARGV[2]) then
      redis.call('DEL', k)
      redis.call('SREM', sk, d)
      n = n + 1
    end
  end
  if redis.call('SCARD', sk) == 0 then redis.call('SREM', KEYS[1], s) end
end
return n
"""

# ARGV: prefix, the reference prefix; returns every stored reference, or false for a namespace
# never written (no index and no marker: a misspelt namespace must not read as "no references")
_REFS: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then return false end
local out = {}
for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, d in ipairs(redis.call('SMEMBERS', ARGV[1] .. 's:' .. s)) do
    local k = ARGV[1] .. 'e:' .. d
    if redis.call('HSTRLEN', k, 'v') < 256 then
      local v = redis.call('HGET', k, 'v')
      if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then table.insert(out, v) end
    end
  end
end
return out
"""


def _import_redis() -> Any:
    try:
        import redis  # the extra: imported when a RedisCache is made
        import redis.backoff
        import redis.retry
    except ImportError as exc:
        msg = f"RedisCache needs the redis extra: {REDIS_HINT}"
        raise ImportError(msg) from exc
    return redis


class _Op(Job[T]):
    """One Redis operation: one command queued on the trip's pipeline, and its reply's reading."""

    __slots__ = ("finish", "queue")

    def __init__(
        self, queue: Callable[[Any], object], finish: Callable[[Any], T], key: str | None
    ) -> None:
        super().__init__(key)
        self.queue = queue
        self.finish = finish


@final
class RedisCache(TripBatcher):
    """A `CacheStore` on a Redis server: one cache for every process and host that reaches it.

    Needs the `redis` extra (`pip install 'wavepipe[redis]'`) and a server (`redis-server`).
    A server that is down or restarts mid-run makes operations fail with `CacheError`, which a
    run records in `StageRun.cache_errors` and treats as a miss (the stage recomputes); the
    next operation reconnects. Use one instance per event loop. `count`, `clear`, `invalidate`
    and `gc_artifacts` walk their namespace's index in one server-side script, which holds the
    server for as long as that takes (2-3 us per entry, measured).

    Args:
        url: The server, as `redis://host:6379/0` (`rediss://` for TLS, `unix://` for a socket).
        namespace: Prefix of every key this store writes (no `:`, which separates it from
            the rest of the key); `clear()` and `count()` touch only their namespace, so
            several caches can share one server.
        artifacts: Where values longer than `artifact_threshold_bytes` go, as content-addressed
            files the entry refers to: a local directory (created) or an fsspec URL (extra
            `fsspec`; use a location every host reaches). None keeps every value in Redis.
        artifact_threshold_bytes: The size (of the serialised bytes) above which a value
            becomes an artifact.
        ttl_s: Entries older than this many seconds read as missing (None: never expire);
            Redis also drops them itself after that long.
        time_fn: Wall-clock time in seconds for the TTL (default `time.time`; tests pass a fake).
        timeout_s: How long one wait on the connection may take: connecting, or waiting for
            (more of) a reply. It is not a bound on a whole operation: a round trip that fails
            is retried once on a fresh connection, and connecting is itself tried twice, so an
            operation against a server that stops answering fails with `CacheError` after
            about 2 x `timeout_s`, and can take up to 4 x `timeout_s` when reconnecting hangs too.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "pipeline",
        artifacts: str | os.PathLike[str] | None = None,
        artifact_threshold_bytes: int = DEFAULT_THRESHOLD,
        ttl_s: float | None = None,
        time_fn: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
    ) -> None:
        _check_ttl("RedisCache", ttl_s)
        given: tuple[object, object] = (url, namespace)  # checked at run time
        if not isinstance(given[0], str) or "://" not in url:
            raise DefinitionError(
                "RedisCache", "url", f"is {url!r}", "use a URL such as 'redis://localhost:6379/0'"
            )
        if not isinstance(given[1], str) or not namespace or namespace != namespace.strip():
            raise DefinitionError(
                "RedisCache",
                "namespace",
                f"is {namespace!r}",
                "use a non-empty string without surrounding spaces",
            )
        if ":" in namespace:
            raise DefinitionError(
                "RedisCache",
                "namespace",
                f"is {namespace!r}, which contains ':'",
                f"use a namespace without ':', e.g. {namespace.replace(':', '-')!r} (':' ends the "
                f"namespace in the keys this store writes, so {namespace.split(':')[0]!r} and "
                f"{namespace!r} could share keys)",
            )
        if not timeout_s > 0:
            raise DefinitionError("RedisCache", "timeout_s", f"is {timeout_s!r}", "use seconds > 0")
        self._redis = _import_redis()
        try:
            self._redis.connection.parse_url(url)
        except ValueError as exc:
            raise DefinitionError(
                "RedisCache",
                "url",
                f"is {_redact(url)!r} ({exc})",
                "use redis://, rediss:// or unix://",
            ) from exc
        self.url = url
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.time_fn = time_fn
        self.timeout_s = timeout_s
        self._prefix = f"{namespace}:"
        self._client: Any = None
        self._pending = []
        self._leading = False
        self._artifacts = Artifacts(repr(self), artifacts, artifact_threshold_bytes)

    def __repr__(self) -> str:
        return f"RedisCache({_redact(self.url)!r}, namespace={self.namespace!r})"

    async def __aenter__(self) -> RedisCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- keys ------------------------------------------------------------------------------------
    def _entry(self, digest: str) -> str:
        return f"{self._prefix}e:{digest}"

    def _stage(self, stage_id: str) -> str:
        return f"{self._prefix}s:{stage_id}"

    @property
    def _stages(self) -> str:
        return f"{self._prefix}stages"

    @property
    def _written(self) -> str:
        return f"{self._prefix}written"

    # -- the store operations --------------------------------------------------------------------
    async def get(self, key: CacheKey) -> bytes | None:
        """The bytes under `key`, or None when missing or expired."""
        ttl, now, digest = self.ttl_s, self.time_fn, key.digest

        def finish(reply: Any) -> bytes | None:
            created, value = reply
            if value is None:
                return None
            try:
                age = now() - float(created)
            except (TypeError, ValueError) as exc:
                raise CacheError(repr(self), digest, "corrupt entry (bad creation time)") from exc
            if ttl is not None and age > ttl:
                return None
            return bytes(value)

        found = await self._call(lambda p: p.hmget(self._entry(digest), "t", "v"), finish, digest)
        if found is not None and found.startswith(NUL):
            return await self._artifacts.unpack(found, digest)
        return found

    async def put(self, key: CacheKey, value: bytes) -> None:
        """Store `value` under `key` atomically, replacing any older entry.

        A value over the artifact threshold is written (and committed) as an artifact first;
        the entry then holds the reference.
        """
        stored = await self._artifacts.pack(bytes(value), key.digest)
        ttl_ms = 0 if self.ttl_s is None else max(1, int(self.ttl_s * 1000))
        keys = (self._entry(key.digest), self._stage(key.stage_id), self._stages, self._written)
        args = (stored, key.stage_id, repr(self.time_fn()), key.digest, ttl_ms)
        await self._call(lambda p: p.eval(_PUT, 4, *keys, *args), _none, key.digest)

    async def delete(self, key: CacheKey) -> bool:
        """Remove the entry under `key`; True if there was one."""
        keys = (self._entry(key.digest), self._stage(key.stage_id))
        return await self._call(lambda p: p.eval(_DELETE, 2, *keys, key.digest), _positive, None)

    async def invalidate(self, stage_id: str) -> int:
        """Remove every entry of `stage_id` (in this namespace); return how many."""
        keys = (self._stage(stage_id), self._stages)
        return await self._call(
            lambda p: p.eval(_INVALIDATE, 2, *keys, self._prefix, stage_id), int, None
        )

    async def clear(self) -> None:
        """Remove every entry of this namespace (nothing else on the server)."""
        keys = (self._stages, self._written)
        await self._call(lambda p: p.eval(_CLEAR, 2, *keys, self._prefix), _none, None)

    async def count(self, stage_id: str | None = None) -> int:
        """How many live entries this namespace holds (of `stage_id`, when given)."""
        oldest = "" if self.ttl_s is None else repr(self.time_fn() - self.ttl_s)
        one, sid = ("0", "") if stage_id is None else ("1", stage_id)
        args = (self._prefix, oldest, one, sid)
        return await self._call(lambda p: p.eval(_COUNT, 1, self._stages, *args), int, None)

    async def purge_expired(self) -> int:
        """Delete entries past the TTL and tidy the namespace's index; return how many.

        Expired entries already read as missing, and Redis drops them itself after `ttl_s`;
        this also removes what the index still lists for them.
        """
        oldest = "" if self.ttl_s is None else repr(self.time_fn() - self.ttl_s)
        return await self._call(
            lambda p: p.eval(_PURGE, 1, self._stages, self._prefix, oldest), int, None
        )

    async def gc_artifacts(self, *, grace_s: float = 3600.0) -> ArtifactGcReport:
        """Remove artifacts no entry of this namespace refers to, and stale temp files.

        Only files older than `grace_s` seconds go (a write in progress commits its artifact
        before its entry). Use one artifact location per namespace: a location shared by
        several namespaces or stores loses the artifacts only the others refer to.

        Raises:
            CacheError: The store has no `artifacts=`, the server cannot be reached, or the
                namespace was never written on this server (a misspelt namespace, or a server
                that lost its data): then nothing is removed.
        """
        keys = (self._stages, self._written)
        refs: list[bytes] | None = await self._call(
            lambda p: p.eval(_REFS, 2, *keys, self._prefix, REF_PREFIX), _list_or_none, None
        )
        if refs is None:
            raise CacheError(
                repr(self),
                None,
                f"namespace {self.namespace!r} was never written on this server, so which "
                "artifacts are referenced is unknown and nothing was removed; pass the "
                "namespace (and server) the artifacts were written with",
            )
        shas = {referenced_sha(bytes(ref)) or "" for ref in refs}
        return await anyio.to_thread.run_sync(self._artifacts.gc, shas, grace_s)

    async def ping(self) -> bool:
        """True when the server answers (raises `CacheError` when it does not)."""
        return await self._call(lambda p: p.ping(), bool, None)

    async def aclose(self) -> None:
        """Close the connections (a later call reconnects); idempotent."""
        client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.close)

    # -- one worker-thread trip (one pipelined round trip) for every operation waiting (_batch) --
    async def _call(
        self, queue: Callable[[Any], object], finish: Callable[[Any], T], key: str | None
    ) -> T:
        return await self._submit(_Op(queue, finish, key))

    def _connect(self) -> Any:
        if self._client is None:
            redis = self._redis
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                # one quick retry on a fresh connection: a restarted server drops the pooled
                # ones, and the retry is what keeps a restart from costing a recompute
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 1),
            )
        return self._client

    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        try:
            client = self._connect()
            if len(batch) == 1:  # one command: skip the pipeline's bookkeeping
                try:
                    replies = [batch[0].queue(client)]
                except self._redis.ResponseError as exc:  # the server refused this command
                    replies = [exc]
            else:
                pipe = client.pipeline(transaction=False)
                for op in batch:
                    op.queue(pipe)
                replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001  # every waiting operation gets the error
            error = CacheError(repr(self), None, f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            for op in batch:
                op.error, op.done = error, True
            return
        for op, reply in zip(batch, replies, strict=True):
            try:
                if isinstance(reply, Exception):
                    raise reply
                op.value = op.finish(reply)
            except CacheError as exc:
                op.error = exc
            except Exception as exc:  # noqa: BLE001  # every other error becomes CacheError
                op.error = CacheError(repr(self), op.key, f"{type(exc).__name__}: {exc}")
                op.error.__cause__ = exc
            op.done = True


def _none(reply: object) -> None:
    return None


def _list_or_none(reply: Any) -> list[bytes] | None:
    return None if reply is None else list(reply)


def _positive(reply: Any) -> bool:
    return int(reply) > 0


def _redact(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"
