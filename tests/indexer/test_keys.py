"""`python -m indexer keys`: a key printed once on stdout (and nothing else there), listed without
it, rotated, revoked and removed; bad input stops with a usage error or a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipsearch.store.keys import read_keys
from indexer.cli import main


def test_a_key_is_printed_once_alone_on_stdout_and_listed_without_it(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(tmp_path / "keys.json")
    assert main(["keys", "create", "--file", keys, "--name", "ann", "--scope", "write", "--collection", "default",
                 "--filter", '{"key": "owner", "match": {"value": "ann"}}', "--rate", "10/s"]) == 0
    made = capsys.readouterr()
    secret = made.out.strip()
    assert read_keys(Path(keys)).find(secret) is not None and "shown only now" in made.err
    assert main(["keys", "list", "--file", keys, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"name": "ann", "scope": "write", "created_at": listed[0]["created_at"],
                       "collections": ["default"], "filter": {"key": "owner", "match": {"value": "ann"}},
                       "rate": "10/s", "revoked_at": None}]
    assert main(["keys", "list", "--file", keys]) == 0
    assert "ann  write  collections: default" in capsys.readouterr().out


def test_rotate_revoke_and_remove_change_the_file_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_KEYS_FILE", str(tmp_path / "keys.json"))  # instead of --file
    main(["keys", "create", "--name", "app"])
    old = capsys.readouterr().out.strip()
    assert main(["keys", "rotate", "app"]) == 0
    new = capsys.readouterr().out.strip()
    ring = read_keys(tmp_path / "keys.json")
    assert ring.find(old) is None and ring.find(new) is not None
    assert main(["keys", "revoke", "app"]) == 0 and read_keys(tmp_path / "keys.json").keys["app"].revoked_at
    assert main(["keys", "remove", "app"]) == 0 and read_keys(tmp_path / "keys.json").keys == {}
    assert main(["keys", "revoke", "app"]) == 2
    assert "--name: no key named 'app'" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "message"), [
    (["keys", "create", "--name", "x"], "give --file, or set CLIPSEARCH_KEYS_FILE"),
    (["keys", "create", "--file", "k.json", "--name", "x", "--filter", "{oops"], "--filter: not valid JSON"),
    (["keys", "create", "--file", "k.json", "--name", "x", "--rate", "lots"], "--rate: must be N/s or N/min"),
    (["keys", "create", "--file", "k.json", "--name", "x", "--scope", "root"], "invalid choice"),
])
def test_bad_arguments_stop_with_a_usage_error(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_KEYS_FILE", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
