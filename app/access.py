"""Who is calling, and whether they may: API keys and their scopes, checked before the request's body
is read, and rate limits.

The gate is ASGI middleware, so that a request without a key is answered 401 whatever its body
holds (FastAPI reads and validates the body before any dependency runs, which answered broken JSON
422 even without a key). From a request's method and path it knows the scope needed
(`required_scope`), and answers:

* 401 when a key is needed and none, a wrong one, or a revoked one was given (`X-API-Key`);
* 403 when the key may not do this: a read key writing, a key bound to other collections;
* 429 with Retry-After when the caller's token bucket is empty (clipsearch.util.rates).

Otherwise the request goes on with its `Caller` in the ASGI scope, for the routes that narrow a
key's searches and writes to its filter.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body
from app.metrics import Metrics
from app.settings import Settings
from clipsearch.errors import KeyFileError
from clipsearch.store.catalog import DEFAULT_COLLECTION
from clipsearch.store.keys import ApiKey, KeyRing, KeyScope, Rate, read_keys
from clipsearch.util.files import sha256_hex
from clipsearch.util.rates import TokenBuckets

log = logging.getLogger(__name__)

CALLER = "clipsearch.caller"
"""Where the gate leaves the request's Caller in the ASGI scope."""
API_KEY_HEADER, ADMIN_KEY_HEADER = "X-API-Key", "X-Admin-Key"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a named key, one of the two keys set in the settings ('api-key',
    'admin-key'), or 'anonymous' where no key is needed."""

    name: str
    scope: KeyScope
    key: ApiKey | None = None
    rate: Rate | None = None

    @property
    def filter_json(self) -> str | None:
        """The filter every search and write of this caller stays inside, as sorted JSON; None for
        an unbound caller."""
        return None if self.key is None or self.key.filter is None else json.dumps(self.key.filter, sort_keys=True)


ANONYMOUS_READER = Caller("anonymous", KeyScope.READ)


class Refusal(Exception):
    """The gate's answer to a request it stops: a status, the reason, the header at fault."""

    def __init__(self, status: int, reason: str, field: str | None, key_name: str = "unknown",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.field, self.key_name, self.headers = status, reason, field, key_name, headers


class KeyFile:
    """The keys file, read again whenever it changes (the indexer replaces it whole), so that a key
    made, rotated or revoked counts at once in every worker, without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._ring = KeyRing()
        self._lock = threading.Lock()
        self._started = False
        self.ring()  # a malformed file stops the server at start-up, naming it
        self._started = True

    def ring(self) -> KeyRing:
        try:
            info = os.stat(self.path)
            seen: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen != self._seen:
                try:
                    self._ring = read_keys(self.path)
                except KeyFileError as error:
                    if not self._started:
                        raise
                    # A running server keeps the keys it had rather than answer 500 to everyone.
                    log.error("the keys file could not be read; still using the keys read before: %s", error)
                self._seen = seen
            return self._ring


class Access:
    """The access rules of one server: its keys, its rate limit, and the buckets they draw from."""

    def __init__(self, settings: Settings) -> None:
        self.api_key, self.admin_key = settings.api_key, settings.admin_key
        self.keys = None if settings.keys_file is None else KeyFile(settings.keys_file)
        self.rate = None if settings.rate_limit is None else Rate.parse(settings.rate_limit)
        self.buckets_path = settings.rate_limit_file or _default_buckets_path(settings.data_dir or settings.bundle_path)
        self._buckets: TokenBuckets | None = None
        self._buckets_lock = threading.Lock()

    @property
    def locked(self) -> bool:
        """Whether reads need a key."""
        return self.api_key is not None or self.keys is not None

    @property
    def writes_enabled(self) -> bool:
        return self.admin_key is not None or self.keys is not None

    def caller(self, headers: Headers, required: KeyScope, collection: str | None = DEFAULT_COLLECTION) -> Caller:
        """Who sent `headers`, if they may do what needs `required` of `collection` (None: of none in
        particular); else a Refusal."""
        given = headers.get(API_KEY_HEADER)
        caller = self._reader(given)
        if caller.scope < required:
            caller = self._writer(caller, headers.get(ADMIN_KEY_HEADER), required)
        if caller.key is not None and collection is not None and not caller.key.allows(collection):
            raise Refusal(403, f"key '{caller.name}' is for the collections {', '.join(caller.key.collections)}, "
                               f"not '{collection}'", API_KEY_HEADER, caller.name)
        return caller

    def wait(self, caller: Caller, client: str) -> float:
        """Seconds until `caller` may make a request (0: now, and a token is taken)."""
        rate = caller.rate or self.rate
        if rate is None:
            return 0.0
        bucket = f"address:{client}" if caller is ANONYMOUS_READER else f"key:{caller.name}"
        return self._token_buckets().take(bucket, rate.per_second, rate.burst)

    def _reader(self, given: str | None) -> Caller:
        if not self.locked:
            return ANONYMOUS_READER  # a key sent to an open server is ignored, as it always was
        if given is None:
            raise Refusal(401, "missing or wrong API key", API_KEY_HEADER)
        if self.api_key is not None and _matches(given, self.api_key):
            return Caller("api-key", KeyScope.READ, rate=self.rate)
        key = None if self.keys is None else self.keys.ring().find(given)
        if key is None:
            raise Refusal(401, "missing or wrong API key", API_KEY_HEADER)
        if key.revoked_at is not None:
            raise Refusal(401, f"key '{key.name}' was revoked at {key.revoked_at}", API_KEY_HEADER, key.name)
        return Caller(key.name, key.scope, key, key.rate)

    def _writer(self, reader: Caller, admin_given: str | None, required: KeyScope) -> Caller:
        """The caller of a write or admin request whose X-API-Key does not allow it: the admin key's
        holder, or a 403 saying why not."""
        if self.admin_key is not None and admin_given is not None and _matches(admin_given, self.admin_key):
            return Caller("admin-key", KeyScope.ADMIN, rate=reader.rate)
        if reader.key is not None:
            article = "an" if required is KeyScope.ADMIN else "a"
            raise Refusal(403, f"key '{reader.name}' may {reader.scope.label}, and this needs {article} "
                               f"{required.label} key", API_KEY_HEADER, reader.name)
        if not self.writes_enabled:
            raise Refusal(403, "writes are turned off: set CLIPSEARCH_ADMIN_KEY (or CLIPSEARCH_KEYS_FILE with a "
                               "write key) on the server to allow them", ADMIN_KEY_HEADER)
        raise Refusal(403, "missing or wrong admin key", ADMIN_KEY_HEADER, reader.name)

    def _token_buckets(self) -> TokenBuckets:
        with self._buckets_lock:
            if self._buckets is None:
                self._buckets = TokenBuckets(self.buckets_path)
            return self._buckets


OPEN_PATHS = frozenset({"/health", "/ready", "/"})
"""Liveness, readiness and the page: probes and browsers reach them without a key."""
DOCS_PATHS = frozenset({"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
ONE_ITEM = re.compile(r"^/items/[^/]+$")


COLLECTION_PATH = re.compile(r"^/collections/([^/]+)(/.*)$")
"""A route of one collection: /collections/NAME/search/text is /search/text of NAME."""
ONE_COLLECTION = re.compile(r"^/collections/([^/]+)$")


def required_scope(method: str, path: str, docs_open: bool) -> tuple[KeyScope | None, str | None]:
    """The scope a request needs (None: none), and the collection it is for (None: the list of them,
    which shows each key the collections it may use). Writes are every change to /items; a change to
    a collection as a whole (making, dropping, a snapshot) needs an admin key; everything else but
    the open paths reads, unknown paths included (so that a caller without a key learns nothing, not
    even which paths exist). Today's paths are the default collection's. The routes' own
    dependencies (app.deps) declare the same headers in the OpenAPI schema, and a test holds the two
    together."""
    if method == "OPTIONS" or path in OPEN_PATHS or path.startswith("/static/") or (docs_open and path in DOCS_PATHS):
        return None, DEFAULT_COLLECTION
    if path == "/collections":
        return KeyScope.READ, None
    if (itself := ONE_COLLECTION.match(path)) is not None:
        return (KeyScope.ADMIN if method in ("PUT", "DELETE") else KeyScope.READ), itself.group(1)
    collection = DEFAULT_COLLECTION
    if (inside := COLLECTION_PATH.match(path)) is not None:
        collection, path = inside.group(1), inside.group(2)
        if method == "POST" and path == "/snapshot":
            return KeyScope.ADMIN, collection
    if (method == "POST" and path in ("/items", "/items/delete")) or \
            (method in ("PATCH", "DELETE") and ONE_ITEM.match(path)):
        return KeyScope.WRITE, collection
    # Any other method reads, so that the app answers one no route takes (PUT /items/7) with 405.
    return KeyScope.READ, collection


class KeyGate:
    """The ASGI middleware that applies `access` to each request that needs a key, before its body is read."""

    def __init__(self, app: ASGIApp, access: Access, metrics: Metrics, docs_open: bool) -> None:
        self.app, self.access, self.metrics, self.docs_open = app, access, metrics, docs_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        required, collection = required_scope(scope["method"], scope["path"], self.docs_open)
        if required is None:
            await self.app(scope, receive, send)
            return
        try:
            caller = self.access.caller(Headers(scope=scope), required, collection)
            client = scope.get("client")
            wait = self.access.wait(caller, client[0] if client else "unknown")
            if wait > 0:
                raise Refusal(429, f"over the rate limit of {caller.rate or self.access.rate}: try again in "
                                   f"{wait:.2f} s", None, caller.name, {"Retry-After": str(math.ceil(wait))})
        except Refusal as refusal:
            outcome = "limited" if refusal.status == 429 else "refused"
            self.metrics.key_requests.labels(refusal.key_name, outcome).inc()
            headers = dict(refusal.headers or {})
            if refusal.status == 401:
                headers["WWW-Authenticate"] = API_KEY_HEADER
            await error_body(refusal.status, refusal.reason, refusal.field, headers)(scope, receive, send)
            return
        self.metrics.key_requests.labels(caller.name, "allowed").inc()
        scope[CALLER] = caller
        await self.app(scope, receive, send)


def caller_of(scope: Scope) -> Caller:
    """The caller the gate let through (an anonymous reader for an open route)."""
    caller: Caller = scope.get(CALLER, ANONYMOUS_READER)
    return caller


def _matches(given: str, expected: SecretStr) -> bool:
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.get_secret_value().encode())


def _default_buckets_path(bundle_path: Path) -> Path:
    """One file per bundle served (its workers share it) and per user, in the temporary directory."""
    tag = sha256_hex(str(bundle_path.resolve()).encode())[:16]
    return Path(tempfile.gettempdir()) / f"clipsearch-rates-{os.getuid()}-{tag}.sqlite"
