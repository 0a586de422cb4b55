"""The keys file: keys made, found, rotated, revoked and removed, only hashes stored, bad input
refused naming its field; and, as a state machine, every change against a plain dict."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from clipsearch.errors import KeyFileError
from clipsearch.store.keys import (
    KEY_PREFIX,
    KeyScope,
    Rate,
    create_key,
    read_keys,
    remove_key,
    revoke_key,
    rotate_key,
)


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, secret = create_key(path, "photos-app", KeyScope.WRITE, ("default",),
                             {"key": "owner", "match": {"value": "ann"}}, Rate.parse("5/s"))
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 43
    stored = path.read_text()
    assert secret not in stored and key.sha256 in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    found = read_keys(path).find(secret)
    assert found == key and found.scope is KeyScope.WRITE and found.rate == Rate(5.0, 5.0)
    assert found.allows("default") and not found.allows("other")
    assert read_keys(path).find(secret[:-1]) is None and read_keys(path).find("") is None


def test_rotating_a_key_stops_the_old_secret_at_once_and_keeps_its_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, old = create_key(path, "reader", KeyScope.READ, filter={"key": "album", "match": {"value": "Paris"}})
    rotated, new = rotate_key(path, "reader")
    assert read_keys(path).find(old) is None and read_keys(path).find(new) == rotated
    assert (rotated.scope, rotated.filter) == (key.scope, key.filter) and new != old


def test_a_revoked_key_is_still_found_so_it_can_be_answered_revoked_until_removed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, secret = create_key(path, "old-laptop", KeyScope.READ)
    revoked = revoke_key(path, "old-laptop")
    assert read_keys(path).find(secret) == revoked and revoked.revoked_at is not None
    remove_key(path, "old-laptop")
    assert read_keys(path).find(secret) is None and read_keys(path).keys == {}


@pytest.mark.parametrize(("call", "field", "reason"), [
    (lambda path: create_key(path, "two words", KeyScope.READ), "name", "letters, digits"),
    (lambda path: create_key(path, "ok", KeyScope.READ, ("bad/collection",)), "collection", "letters, digits"),
    (lambda path: create_key(path, "ok", KeyScope.READ, filter={"key": "a", "match": {"eq": 1}}), "filter.match",
     ""),
    (lambda path: rotate_key(path, "nobody"), "name", "no key named 'nobody'"),
    (lambda path: revoke_key(path, "nobody"), "name", "no key named 'nobody'"),
    (lambda path: KeyScope.named("owner"), "scope", "read, write or admin"),
    (lambda path: Rate.parse("fast"), "rate", "N/s or N/min"),
    (lambda path: Rate.parse("0/s"), "rate", "above zero"),
])
def test_bad_key_input_is_refused_naming_its_field(tmp_path: Path, call: object, field: str, reason: str) -> None:
    with pytest.raises(Exception) as refused:
        call(tmp_path / "keys.json")  # type: ignore[operator]
    assert getattr(refused.value, "field", None) == field and reason in refused.value.reason  # type: ignore[attr-defined]
    assert not (tmp_path / "keys.json").exists()


def test_two_keys_may_not_share_a_name(tmp_path: Path) -> None:
    create_key(tmp_path / "keys.json", "app", KeyScope.READ)
    with pytest.raises(KeyFileError, match="exists already"):
        create_key(tmp_path / "keys.json", "app", KeyScope.ADMIN)


def test_a_rate_per_minute_is_a_rate_per_second_with_a_burst_of_at_least_one() -> None:
    assert Rate.parse("600/min") == Rate(10.0, 10.0)
    assert Rate.parse("30 / minute") == Rate(0.5, 1.0)


def test_a_file_that_is_not_a_keys_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": 3}')
    with pytest.raises(KeyFileError, match="format version"):
        read_keys(path)
    path.write_text("not json")
    with pytest.raises(KeyFileError, match="is not a keys file"):
        read_keys(path)


def _make(args: tuple[Path, int]) -> str:
    return create_key(args[0], f"key-{args[1]}", KeyScope.READ)[1]


def test_keys_made_at_once_by_several_processes_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with ProcessPoolExecutor(4) as pool:
        secrets = list(pool.map(_make, [(path, number) for number in range(16)]))
    ring = read_keys(path)
    assert len(ring.keys) == 16 and all(ring.find(secret) is not None for secret in secrets)
    assert json.loads(path.read_text())["format_version"] == 1


NAMES = st.sampled_from(["ann", "bob", "cat"])


class KeyFileMachine(RuleBasedStateMachine):
    """Every change to the file against a dict of name → (secret, revoked)."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "keys.json"
        self.model: dict[str, tuple[str, bool]] = {}
        self.retired: list[str] = []
        """Secrets that must never be found again: rotated away, or of removed keys."""

    @rule(name=NAMES, scope=st.sampled_from(list(KeyScope)))
    def create(self, name: str, scope: KeyScope) -> None:
        if name in self.model:
            with pytest.raises(KeyFileError):
                create_key(self.path, name, scope)
        else:
            self.model[name] = (create_key(self.path, name, scope)[1], False)

    @rule(name=NAMES)
    def rotate(self, name: str) -> None:
        if name not in self.model:
            with pytest.raises(KeyFileError):
                rotate_key(self.path, name)
            return
        self.retired.append(self.model[name][0])
        self.model[name] = (rotate_key(self.path, name)[1], False)

    @rule(name=NAMES)
    def revoke(self, name: str) -> None:
        if name not in self.model:
            with pytest.raises(KeyFileError):
                revoke_key(self.path, name)
            return
        revoke_key(self.path, name)
        self.model[name] = (self.model[name][0], True)

    @rule(name=NAMES)
    def remove(self, name: str) -> None:
        if name not in self.model:
            with pytest.raises(KeyFileError):
                remove_key(self.path, name)
            return
        remove_key(self.path, name)
        self.retired.append(self.model.pop(name)[0])

    @invariant()
    def every_secret_finds_its_key_and_no_retired_one_finds_any(self) -> None:
        ring = read_keys(self.path)
        assert set(ring.keys) == set(self.model)
        for name, (secret, revoked) in self.model.items():
            found = ring.find(secret)
            assert found is not None and found.name == name and (found.revoked_at is not None) == revoked
        assert all(ring.find(secret) is None for secret in self.retired)

    def teardown(self) -> None:
        self.directory.cleanup()


TestKeyFileMachine = KeyFileMachine.TestCase
TestKeyFileMachine.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)
