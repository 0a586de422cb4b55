"""API keys with scopes: a JSON file of named keys, each stored as a hash, made and changed by the
indexer (`python -m indexer keys`) and read by the server.

A key is `cs_` and 43 URL-safe characters (256 random bits), shown once when it is made. Only its
SHA-256 is kept: a key that random needs no slow hash, since no guess list can reach it. A key may
read; write (and read); or administer (and write). It may be bound to some collections only, to a
filter (every search and write it makes is kept inside that filter: tenants inside one
collection), and to a rate (requests per second, a token bucket per key). Revoked keys stay in the
file, so that they are answered "revoked" rather than "wrong", until removed.

The file is replaced whole and atomically on each change, under a lock, so a server that reads it
while the indexer writes sees the old file or the new one, and two changes never lose each other.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from clipsearch.errors import KeyFileError
from clipsearch.store.catalog import COLLECTION_NAME
from clipsearch.store.filters import parse_filter
from clipsearch.util.files import atomic_write_text, sha256_hex

KEY_PREFIX = "cs_"
FORMAT_VERSION = 1
_NAME = COLLECTION_NAME
"""Keys are named as collections are."""
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")


class KeyScope(IntEnum):
    """What a key may do; each scope includes those below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> KeyScope:
        try:
            return cls[name.upper()]
        except KeyError:
            raise KeyFileError(f"must be read, write or admin, not {name!r}", "scope") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` tokens come back each second, up to `burst` held."""

    per_second: float
    burst: float

    @classmethod
    def parse(cls, text: str, field: str = "rate") -> Rate:
        """'10/s' or '600/min'; the burst is one second's worth, and at least one request."""
        matched = _RATE.match(text)
        if matched is None:
            raise KeyFileError(f"must be N/s or N/min, such as 10/s, not {text!r}", field)
        count, unit = float(matched.group(1)), matched.group(2)
        per_second = count if unit.startswith("s") else count / 60
        if per_second <= 0:
            raise KeyFileError("must be above zero", field)
        return cls(per_second, max(1.0, per_second))

    def __str__(self) -> str:
        return f"{self.per_second:g}/s"


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: never the key itself, only its hash."""

    name: str
    scope: KeyScope
    sha256: str
    created_at: str
    collections: tuple[str, ...] = ()
    """The collections it may use; empty: all."""
    filter: dict[str, Any] | None = None
    """Every search it makes is narrowed to this filter, and every write must stay inside it."""
    rate: Rate | None = None
    revoked_at: str | None = None

    def allows(self, collection: str) -> bool:
        return not self.collections or collection in self.collections

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scope"] = self.scope.label
        data["collections"] = list(self.collections)
        data["rate"] = None if self.rate is None else str(self.rate)
        return data

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> ApiKey:
        return cls(name=data["name"], scope=KeyScope.named(data["scope"]), sha256=data["sha256"],
                   created_at=data["created_at"], collections=tuple(data.get("collections") or ()),
                   filter=data.get("filter"), rate=None if data.get("rate") is None else Rate.parse(data["rate"]),
                   revoked_at=data.get("revoked_at"))


@dataclass(frozen=True)
class KeyRing:
    """The keys of one file, by name."""

    keys: dict[str, ApiKey] = field(default_factory=dict)

    def find(self, secret: str) -> ApiKey | None:
        """The key `secret` is, revoked or not; None for any other string. Every stored hash is
        compared in constant time, so timing tells nothing of which one came close."""
        digest = hash_key(secret)
        found = None
        for key in self.keys.values():
            if hmac.compare_digest(key.sha256, digest):
                found = key
        return found


def hash_key(secret: str) -> str:
    return sha256_hex(secret.encode("utf-8", "surrogatepass"))


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys(path: Path) -> KeyRing:
    """The keys in `path`; a missing file holds none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return KeyRing()
    try:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise KeyFileError(f"{path}: format version {data.get('format_version')!r}, this build reads "
                               f"{FORMAT_VERSION}", "keys_file")
        return KeyRing({entry["name"]: ApiKey.of_json(entry) for entry in data["keys"]})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise KeyFileError(f"{path} is not a keys file ({error!r})", "keys_file") from None


def create_key(path: Path, name: str, scope: KeyScope, collections: tuple[str, ...] = (),
               filter: dict[str, Any] | None = None, rate: Rate | None = None) -> tuple[ApiKey, str]:
    """Make a key named `name` and store its hash; returns the record and the key, which is never
    stored and cannot be shown again."""
    _check_name(name, "name")
    for collection in collections:
        _check_name(collection, "collection")
    if filter is not None:
        parse_filter(filter, "filter")  # refused now, naming the path, rather than at every request
    with _locked(path) as ring:
        if name in ring.keys:
            raise KeyFileError(f"a key named {name!r} exists already: rotate it, or revoke and remove it", "name")
        secret = new_secret()
        key = ApiKey(name, scope, hash_key(secret), _now(), tuple(collections), filter, rate)
        _write(path, {**ring.keys, name: key})
    return key, secret


def rotate_key(path: Path, name: str) -> tuple[ApiKey, str]:
    """Give key `name` a new secret (its scopes kept, revoked or not: rotating brings it back); the old
    secret stops working at once."""
    with _locked(path) as ring:
        old = _existing(ring, name)
        secret = new_secret()
        key = replace(old, sha256=hash_key(secret), created_at=_now(), revoked_at=None)
        _write(path, {**ring.keys, name: key})
    return key, secret


def revoke_key(path: Path, name: str) -> ApiKey:
    with _locked(path) as ring:
        key = replace(_existing(ring, name), revoked_at=_now())
        _write(path, {**ring.keys, name: key})
    return key


def remove_key(path: Path, name: str) -> ApiKey:
    """Drop key `name` from the file: it is then answered as any wrong key is."""
    with _locked(path) as ring:
        key = _existing(ring, name)
        _write(path, {other: kept for other, kept in ring.keys.items() if other != name})
    return key


@contextmanager
def _locked(path: Path) -> Iterator[KeyRing]:
    """The file's keys, read under an exclusive lock held until the change is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield read_keys(path)


def _write(path: Path, keys: dict[str, ApiKey]) -> None:
    text = json.dumps({"format_version": FORMAT_VERSION, "keys": [key.to_json() for key in keys.values()]}, indent=2)
    atomic_write_text(path, text + "\n")
    os.chmod(path, 0o600)  # hashes only, but nobody else needs to read them


def _existing(ring: KeyRing, name: str) -> ApiKey:
    if name not in ring.keys:
        raise KeyFileError(f"no key named {name!r} (keys: {', '.join(sorted(ring.keys)) or 'none'})", "name")
    return ring.keys[name]


def _check_name(name: str, field: str) -> None:
    if not _NAME.match(name):
        raise KeyFileError(f"{name!r}: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                           field)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
