"""`python -m indexer snapshot` and `restore`: the archive written and brought back with a line that
says what was done; a destination that exists, or a damaged archive, stops with a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.store.bundle import load_bundle
from indexer.cli import main
from tests.support.corpora import private_copy


def test_a_bundle_archived_and_restored_is_the_same_bundle(bundle_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bundle = private_copy(bundle_path, tmp_path)
    assert main(["snapshot", "--bundle", str(bundle), "--out", str(tmp_path / "b.tar")]) == 0
    said = capsys.readouterr().out
    assert f"written to {tmp_path / 'b.tar'}" in said and "writes held up" in said
    assert main(["restore", "--snapshot", str(tmp_path / "b.tar"), "--bundle", str(tmp_path / "again")]) == 0
    assert "every file verified" in capsys.readouterr().out
    original, restored = load_bundle(bundle), load_bundle(tmp_path / "again")
    assert restored.manifest.files == original.manifest.files
    assert [item.id for item in restored.items] == [item.id for item in original.items]


def test_restoring_onto_an_existing_path_or_from_a_damaged_file_stops_with_a_message(
        bundle_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.tar").write_bytes(b"not an archive at all")
    assert main(["restore", "--snapshot", str(tmp_path / "junk.tar"), "--bundle", str(tmp_path / "x")]) == 2
    assert "--snapshot: " in (err := capsys.readouterr().err) and "is not a snapshot archive" in err
    assert main(["restore", "--snapshot", str(tmp_path / "junk.tar"), "--bundle", str(bundle_path)]) == 2
    err = capsys.readouterr().err
    assert "--bundle: " in err and "exists already" in err
    with pytest.raises(SystemExit):
        main(["snapshot", "--bundle", str(bundle_path), "--out", "x.tar", "--lock-timeout", "0"])
