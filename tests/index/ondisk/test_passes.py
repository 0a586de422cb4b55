"""The passes that write an on-disk index's files: a build killed while filling resumes after its last
shard; other settings start afresh."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.ondisk import (
    Built,
    build_in,
    chunks_of,
)


def test_a_build_killed_while_filling_its_lists_resumes_and_ends_with_the_same_index(
        built: Built, tmp_path: Path) -> None:
    ids, vectors, queries = built.ids, built.vectors, built.queries
    passes = 0

    def dying_chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal passes
        passes += 1
        for number, chunk in enumerate(chunks_of(ids, vectors)()):
            if passes == 2 and number == 5:  # the fill pass, after two of its three shards are written
                raise KeyboardInterrupt
            yield chunk

    with pytest.raises(KeyboardInterrupt):
        build_in(tmp_path, ids, vectors, queries, dying_chunks)
    assert sorted(path.name for path in tmp_path.glob("fill-*")) == ["fill-00000.faiss", "fill-00001.faiss"]
    written = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("fill-*")}
    files, spec = build_in(tmp_path, ids, vectors, queries)
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("fill-0000[01]*")} == written  # kept
    assert spec == built.spec
    assert files.ivfdata.read_bytes() == built.files.ivfdata.read_bytes()


def test_other_settings_start_the_work_directory_afresh(built: Built, tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text(json.dumps({"factory": "IVF64,PQ8"}))
    (tmp_path / "fill-00000.faiss").write_bytes(b"from another build")
    files, _ = build_in(tmp_path, built.ids, built.vectors, built.queries)
    assert files.ivfdata.read_bytes() == built.files.ivfdata.read_bytes()
