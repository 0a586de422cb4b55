"""Writes are all or nothing: a file holds its old content or the complete new one, never a part."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.util.files import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256, sha256_hex


def test_a_finished_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]


def test_a_write_that_fails_halfway_leaves_the_old_content_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "items.sqlite"
    target.write_bytes(b"complete old content")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as temporary:
        temporary.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"complete old content"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["items.sqlite"]


def test_a_stale_temporary_file_from_a_killed_writer_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "shard.npz"
    (tmp_path / "shard.npz.tmp").write_bytes(b"left by kill -9")
    atomic_write_bytes(target, b"fresh")
    assert target.read_bytes() == b"fresh" and not (tmp_path / "shard.npz.tmp").exists()


def test_file_hashes_equal_the_hash_of_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob", chunk_bytes=1000) == sha256_hex(data)
