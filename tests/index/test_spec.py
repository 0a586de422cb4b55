"""The index a corpus gets by default, and the FAISS-free record of it the manifest keeps."""

from __future__ import annotations

import subprocess
import sys

from clipsearch.index.spec import default_factory


def test_the_default_is_exact_up_to_the_threshold_and_ivf_above() -> None:
    assert default_factory(1000, flat_threshold=1000) == "Flat"
    assert default_factory(1_000_001, flat_threshold=1_000_000) == "IVF4096,Flat"


def test_past_the_on_disk_threshold_the_default_is_ivf_pq_with_a_divisor_of_the_dimension() -> None:
    assert default_factory(10_000_001, on_disk_threshold=10_000_000, dim=512) == "IVF16384,PQ64"
    assert default_factory(10_000_001, on_disk_threshold=10_000_000, dim=96) == "IVF16384,PQ12"


def test_the_spec_and_the_manifest_load_without_faiss_or_torch() -> None:
    code = ("import sys, clipsearch.index.spec, clipsearch.store.manifest, clipsearch.config, "
            "clipsearch.ingest.config; sys.exit(sorted({'faiss', 'torch'} & set(sys.modules)) or 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
