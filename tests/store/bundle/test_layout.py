"""The names of a bundle's files: fixed per modality, since an on-disk index finds its lists by name."""

from __future__ import annotations

from clipsearch.modality import Modality
from clipsearch.store.bundle.layout import index_file_name, on_disk_file_names, on_disk_name


def test_each_modality_has_its_own_index_and_on_disk_files() -> None:
    assert index_file_name(Modality.IMAGE) == "image.faiss" and index_file_name(Modality.TEXT) == "text.faiss"
    assert on_disk_file_names(Modality.IMAGE) == ("image.ivfdata", "image.vectors.npy", "image.ids.npy")
    assert all(name.startswith(on_disk_name(Modality.TEXT) + ".") for name in on_disk_file_names(Modality.TEXT))
