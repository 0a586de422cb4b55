from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.imagefiles import image_bytes, noise_image


def first_image_id(http: httpx.Client, name: str) -> int:
    response = http.post("/search/image", files={"file": ("q.png", image_bytes(noise_image(0)))},
                         data={"k": "30"})
    return next(hit["id"] for hit in response.json()["results"] if hit["uri"].endswith(name))


def test_an_items_metadata_is_served(http: httpx.Client, corpus_dir: Path) -> None:
    item_id = first_image_id(http, "picture_000.png")
    body = http.get(f"/items/{item_id}").json()
    assert body == {"id": item_id, "modality": "image", "uri": str((corpus_dir / "images/picture_000.png").resolve()),
                    "caption": "caption of picture 0", "text": None, "metadata": {"number": 0}}


def test_a_text_items_text_is_served(http: httpx.Client) -> None:
    body = http.get("/items/30").json()
    assert body["modality"] == "text" and body["text"] == "a sentence about thing number 0"


def test_an_items_image_is_served_with_its_content_type(http: httpx.Client, corpus_dir: Path) -> None:
    item_id = first_image_id(http, "picture_000.png")
    response = http.get(f"/items/{item_id}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == (corpus_dir / "images/picture_000.png").read_bytes()
