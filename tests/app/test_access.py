"""Keys with scopes, collections and filters, and rate limits, against the real server: each wrong
key, revoked key, key for another collection, write outside a key's filter and burst over a limit
gets its own 401, 403, 404 or 429, checked before the body is read."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.access import KeyFile, required_scope
from app.main import create_app
from app.settings import Settings
from clipsearch.errors import KeyFileError
from clipsearch.store.keys import KeyScope, Rate, create_key, revoke_key
from tests.support.serving import ADMIN, serve

LEGACY_READ = "the-old-read-key"


@pytest.fixture(scope="module")
def keyed(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A writable server with a keys file (and the two keys of the settings): its URL, the keys by
    name, and the keys file."""
    root = tmp_path_factory.mktemp("keyed")
    bundle = Path(shutil.copytree(bundle_path, root / "bundle"))
    keys_file = root / "keys.json"
    secrets = {name: create_key(keys_file, name, scope, collections, filter, rate)[1]
               for name, scope, collections, filter, rate in [
                   ("reader", KeyScope.READ, (), None, None),
                   ("writer", KeyScope.WRITE, (), None, None),
                   ("ann", KeyScope.WRITE, (), {"key": "owner", "match": {"value": "ann"}}, None),
                   ("elsewhere", KeyScope.ADMIN, ("holiday-photos",), None, None),
                   ("gone", KeyScope.READ, (), None, None),
                   ("slow", KeyScope.READ, (), None, Rate.parse("1/min"))]}
    revoke_key(keys_file, "gone")
    settings = Settings(bundle_path=bundle, device="cpu", keys_file=keys_file, api_key=LEGACY_READ,  # type: ignore[call-arg]
                        admin_key=ADMIN, rate_limit_file=root / "rates.sqlite")
    with serve(settings) as url:
        yield url, secrets, keys_file


def _as(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


def test_a_request_without_a_key_is_refused_before_its_broken_body_is_read(keyed: tuple[str, dict[str, str], Path]
                                                                         ) -> None:
    url, _, _ = keyed
    for body in (b"{not json", b'{"text": 5}'):
        response = httpx.post(f"{url}/search/text", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 401, response.text
        assert response.json()["field"] == "X-API-Key" and response.headers["WWW-Authenticate"] == "X-API-Key"


def test_a_wrong_key_and_a_revoked_key_are_401_saying_which(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    wrong = httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["reader"][:-1]))
    assert wrong.status_code == 401 and wrong.json()["reason"] == "missing or wrong API key"
    revoked = httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["gone"]))
    assert revoked.status_code == 401 and "key 'gone' was revoked" in revoked.json()["reason"]


def test_a_key_for_another_collection_is_403_naming_its_collections(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    for path in ("/search/text", "/collections/default/search/text"):
        response = httpx.post(url + path, json={"text": "x"}, headers=_as(secrets["elsewhere"]))
        assert response.status_code == 403 and "holiday-photos" in response.json()["reason"]
    # Its own collection lets it through the gate, and this server has no such collection.
    missing = httpx.post(f"{url}/collections/holiday-photos/search/text", json={"text": "x"},
                         headers=_as(secrets["elsewhere"]))
    assert missing.status_code == 404 and missing.json()["field"] == "collection"


def test_only_an_admin_key_may_snapshot_a_collection(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    refused = httpx.post(f"{url}/collections/default/snapshot", headers=_as(secrets["writer"]))
    assert refused.status_code == 403 and "this needs a admin key" not in refused.json()["reason"]
    assert "key 'writer' may write, and this needs an admin key" in refused.json()["reason"]


def test_a_read_key_reads_but_may_not_write(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    assert httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["reader"])).status_code == 200
    refused = httpx.post(f"{url}/items", json={"items": [{"text": "x"}]}, headers=_as(secrets["reader"]))
    assert refused.status_code == 403
    assert "key 'reader' may read, and this needs a write key" in refused.json()["reason"]


def test_a_write_key_writes_alone_and_the_settings_keys_still_work_together(keyed: tuple[str, dict[str, str], Path]
                                                                          ) -> None:
    url, secrets, _ = keyed
    body = {"items": [{"text": "written by the writer key"}]}
    assert httpx.post(f"{url}/items", json=body, headers=_as(secrets["writer"])).status_code == 200
    legacy = {"X-API-Key": LEGACY_READ, "X-Admin-Key": ADMIN}
    assert httpx.post(f"{url}/items", json=body, headers=legacy).status_code == 200
    read_only = httpx.post(f"{url}/items", json=body, headers={"X-API-Key": LEGACY_READ})
    assert read_only.status_code == 403 and read_only.json()["field"] == "X-Admin-Key"


def test_a_key_bound_to_a_filter_lives_inside_it(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    ann, writer = _as(secrets["ann"]), _as(secrets["writer"])
    own = httpx.post(f"{url}/items", json={"items": [{"text": "ann's shopping list", "metadata": {"owner": "ann"}}]},
                     headers=ann).json()["ids"][0]
    bobs = httpx.post(f"{url}/items", json={"items": [{"text": "bob's shopping list", "metadata": {"owner": "bob"}}]},
                      headers=writer).json()["ids"][0]
    found = httpx.post(f"{url}/search/text", json={"text": "shopping list", "target": "text", "k": 50},
                       headers=ann).json()
    assert [hit["id"] for hit in found["results"]] == [own] and found["matched"] == 1
    assert httpx.get(f"{url}/items/{own}", headers=ann).status_code == 200
    for method, path in (("GET", f"/items/{bobs}"), ("DELETE", f"/items/{bobs}")):
        hidden = httpx.request(method, url + path, headers=ann)
        assert hidden.status_code == 404 and f"item {bobs}" in hidden.json()["reason"]
    composed = httpx.post(f"{url}/search", json={"queries": [{"item_id": bobs}], "target": "text"}, headers=ann)
    assert composed.status_code == 404 and composed.json()["field"] == "queries[0].item_id"
    outside = httpx.post(f"{url}/items", json={"items": [{"text": "sneaky", "metadata": {"owner": "bob"}}]},
                         headers=ann)
    assert outside.status_code == 403 and outside.json()["field"] == "items[0].metadata"
    escape = httpx.patch(f"{url}/items/{own}", json={"metadata": {"owner": "bob"}}, headers=ann)
    assert escape.status_code == 403 and escape.json()["field"] == "metadata"
    assert httpx.get(f"{url}/items/{own}", headers=ann).json()["metadata"] == {"owner": "ann"}
    httpx.post(f"{url}/items", json={"items": [{"text": "bob's diary", "key": "diary", "metadata": {"owner": "bob"}}]},
               headers=writer)
    takeover = httpx.post(f"{url}/items", json={"items": [{"text": "mine now", "key": "diary",
                                                            "metadata": {"owner": "ann"}}]}, headers=ann)
    assert takeover.status_code == 403 and takeover.json()["field"] == "items[0].key"
    deleted = httpx.post(f"{url}/items/delete", json={"ids": [bobs, own]}, headers=ann).json()["deleted"]
    assert deleted == [own] and httpx.get(f"{url}/items/{bobs}", headers=writer).status_code == 200


def test_a_key_over_its_rate_is_429_with_retry_after(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    first = httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["slow"]))
    second = httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["slow"]))
    assert first.status_code == 200 and second.status_code == 429
    assert 1 <= int(second.headers["Retry-After"]) <= 60 and "rate limit of 0.0166667/s" in second.json()["reason"]
    assert httpx.get(f"{url}/health").status_code == 200  # probes are never limited


def test_the_metrics_count_requests_by_key_name_never_by_key(keyed: tuple[str, dict[str, str], Path]) -> None:
    url, secrets, _ = keyed
    httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["reader"]))
    httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secrets["gone"]))
    metrics = httpx.get(f"{url}/metrics", headers=_as(secrets["reader"])).text
    assert 'clipsearch_key_requests_total{key="reader",outcome="allowed"}' in metrics
    assert 'clipsearch_key_requests_total{key="gone",outcome="refused"}' in metrics
    assert not any(secret in metrics for secret in secrets.values())


def test_a_key_revoked_while_the_server_runs_stops_at_its_next_request(keyed: tuple[str, dict[str, str], Path],
                                                                       ) -> None:
    url, _, keys_file = keyed
    secret = create_key(keys_file, "temporary", KeyScope.READ)[1]
    assert httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secret)).status_code == 200
    revoke_key(keys_file, "temporary")
    assert httpx.post(f"{url}/search/text", json={"text": "x"}, headers=_as(secret)).status_code == 401


def test_without_keys_a_rate_limit_holds_per_client_address_across_servers(bundle_path: Path, tmp_path: Path) -> None:
    """Two servers sharing the buckets' file stand for two workers of one server."""
    shared = dict(bundle_path=bundle_path, device="cpu", rate_limit="1/min", rate_limit_file=tmp_path / "rates.sqlite")
    with serve(Settings(**shared)) as first, serve(Settings(**shared)) as second:  # type: ignore[arg-type]
        assert httpx.post(f"{first}/search/text", json={"text": "x"}).status_code == 200
        limited = httpx.post(f"{second}/search/text", json={"text": "x"})
        assert limited.status_code == 429 and "Retry-After" in limited.headers


def test_a_keys_file_broken_while_serving_keeps_the_keys_read_before_but_stops_a_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, secret = create_key(path, "app", KeyScope.READ)
    keys = KeyFile(path)
    path.write_text("{half a file")
    found = keys.ring().find(secret)
    assert found is not None and found.name == "app"
    with pytest.raises(KeyFileError, match="is not a keys file"):
        KeyFile(path)


def test_the_gate_asks_for_exactly_the_keys_each_route_declares(bundle_path: Path, tmp_path: Path) -> None:
    create_key(tmp_path / "keys.json", "any", KeyScope.READ)
    app = create_app(Settings(bundle_path=bundle_path, device="cpu", keys_file=tmp_path / "keys.json"))  # type: ignore[call-arg]
    checked = 0
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            declared = {name for requirement in operation.get("security", []) for name in requirement}
            concrete = path.replace("{item_id}", "7").replace("{collection}", "holidays")
            needed, collection = required_scope(method.upper(), concrete, docs_open=False)
            whole = path.endswith("/snapshot") or path == "/collections/{collection}"  # a collection as a whole
            writes = KeyScope.ADMIN if whole else KeyScope.WRITE
            assert needed is (writes if "AdminKeyHeader" in declared else KeyScope.READ if declared else None), \
                (method, path, declared)
            assert collection == ("holidays" if "{collection}" in path else None if path == "/collections"
                                  else "default"), path
            checked += 1
    assert checked >= 40
    # Unknown paths reveal nothing; a method no route takes is answered 405 by the app, after the key.
    assert required_scope("GET", "/no/such/path", docs_open=False) == (KeyScope.READ, "default")
    assert required_scope("PUT", "/items/7", docs_open=False) == (KeyScope.READ, "default")
