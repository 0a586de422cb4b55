"""Indexing speed and a server's memory against clip-retrieval, in the same run, with the same weights.

clip-retrieval goes in a virtual environment of its own, as its README says (it pins numpy < 2 and
pyarrow < 16, and its `clip` dependency still imports pkg_resources):

    python3 -m venv /opt/clip-retrieval
    /opt/clip-retrieval/bin/pip install clip-retrieval 'setuptools<70'
    python -m bench.vs_clip_retrieval --clip-retrieval /opt/clip-retrieval/bin/clip-retrieval \
        --images 2000 --backends auto onnx-int8 openvino-int8 \
        --memory 100000 --memory-backends onnx auto onnx-int8 openvino-int8

Both sides load one ViT-B-32 weights file written here (open_clip's architecture, random weights
from a fixed seed: no download; the speed and memory of pretrained weights, not their answers).

**Indexing** (`--images N`): the same folder of generated 640 × 480 JPEGs, indexed by clip-retrieval's
`inference` + `index` (its defaults: PyTorch, autofaiss) and by `python -m indexer build` with each
of `--backends` (`auto`: on a CPU, the faster of ONNX Runtime and OpenVINO; the int8 ones calibrated
on the folder, a build's default), each with the same decoding workers and batch size, each timed
whole as a user runs it: model load, warm-up, reading, encoding, the index, the files. Our export of
the weights (and its int8 calibration) is made once before, on 8 of the images: it is cached across
builds, like a download, so it is timed apart. Then each of our indices and clip-retrieval's are
asked the same text queries (embedded once, by our encoder on PyTorch) and their top-10 files
compared.

**Memory** (`--memory N`): N random unit vectors (as `bench.http` makes them) served by `clip-retrieval
back` (its index built by `clip-retrieval index`; `--use_jit False`, as its inference defaults to,
and no aesthetic embeddings, which it would download) and by `python -m app` on each of
`--memory-backends`, each asked one text query first; their resident memory (every process of
each), in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.common import (
    ROOT,
    WORDS,
    emit,
    free_port,
    ratio,
    resident_mb,
    served,
    unit_vectors,
    wait_until_answering,
)
from bench.indexing import generate_jpegs
from clipsearch.config import RANDOM_WEIGHTS_SEED, ModelRef
from clipsearch.index import faiss_index
from clipsearch.index.spec import EXACT_FACTORY
from clipsearch.modality import Modality
from clipsearch.model.factory import load_encoder
from clipsearch.search.open import close_service, open_service
from clipsearch.search.query import QueryVector
from clipsearch.store.bundle import ModalityContent, write_bundle
from clipsearch.store.items import Item
from clipsearch.util.files import file_sha256

RUNS_ON = re.compile(r" runs on (\S+) \(")
"""The line the encoder logs once its towers run on an export (clipsearch.model.onnx_backend)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-retrieval", type=Path, required=True,
                        help="the clip-retrieval command of its own virtual environment")
    parser.add_argument("--images", type=int, default=0, help="JPEGs to generate and index with both (0: none)")
    parser.add_argument("--memory", type=int, default=0, help="vectors to serve with both and compare memory (0: no)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes, both sides")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass, both sides")
    parser.add_argument("--queries", type=int, default=50, help="text queries for the top-10 agreement")
    parser.add_argument("--memory-backends", nargs="+", default=["auto"],
                        help="our servers' backends for --memory, each against the same clip-retrieval back (int8 "
                             "ones calibrated on 64 of the generated JPEGs)")
    parser.add_argument("--backends", nargs="+", default=["auto"],
                        help="our builds' backends, each timed against the same clip-retrieval run (int8 ones are "
                             "calibrated on the images folder, as a build's default)")
    parser.add_argument("--scratch", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.clip_retrieval.is_file():
        raise SystemExit(f"no clip-retrieval command at {args.clip_retrieval} (see this script's --help)")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.scratch or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        checkpoint = write_weights(scratch / f"{args.model}-seed{RANDOM_WEIGHTS_SEED}.pt", args.model)
        emit("setup", model=args.model, weights=checkpoint.name, workers=args.workers, batch_size=args.batch_size,
             threads=torch.get_num_threads())
        if args.images:
            compare_indexing(args, scratch, checkpoint)
        if args.memory:
            compare_memory(args, scratch, checkpoint)
    return 0


def write_weights(path: Path, model: str) -> Path:
    """The architecture's weights from a fixed seed, as a checkpoint file both sides load."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        torch.save(open_clip.create_model(model).state_dict(), path)
    return path


def run(command: list[str], cwd: Path) -> tuple[float, str]:
    """Run `command`, failing with its output's tail if it fails; its wall-clock seconds and its output."""
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{(finished.stdout + finished.stderr)[-3000:]}")
    return time.perf_counter() - started, finished.stdout + finished.stderr


def ours_build(folder: Path, out: Path, args: argparse.Namespace, checkpoint: Path, backend: str) -> list[str]:
    return [sys.executable, "-m", "indexer", "build", "--images", str(folder), "--out", str(out), "--model",
            args.model, "--checkpoint", str(checkpoint), "--workers", str(args.workers), "--batch-size",
            str(args.batch_size), "--backend", backend]


def compare_indexing(args: argparse.Namespace, scratch: Path, checkpoint: Path) -> None:
    folder = generate_folder(scratch / "images", args.images, args.workers)
    fresh(scratch / "embeddings", scratch / "index")  # neither tool writes over an earlier run's output
    command = str(args.clip_retrieval)
    inference_s, _ = run([command, "inference", "--input_dataset", str(folder), "--output_folder",
                          str(scratch / "embeddings"), "--clip_model", f"open_clip:{args.model}/{checkpoint}",
                          "--enable_text", "False", "--num_prepro_workers", str(args.workers), "--batch_size",
                          str(args.batch_size)], scratch)
    index_s, _ = run([command, "index", "--embeddings_folder", str(scratch / "embeddings"), "--index_folder",
                      str(scratch / "index")], scratch)
    theirs_s = inference_s + index_s
    index_kind = json.loads((scratch / "index" / "image.json").read_text())["index_key"]
    emit("indexing, clip-retrieval (inference + index)", images=args.images, seconds=theirs_s,
         inference_s=inference_s, index_s=index_s, images_per_s=args.images / theirs_s, index=index_kind)
    for backend in args.backends:
        # The export (and for int8 its calibration on the folder) is made once, on a build of 8 images
        # of the folder: cached across builds, like a download, so timed apart.
        warm = scratch / f"warm-up-{backend}"
        warm.mkdir(exist_ok=True)
        for number, image in enumerate(sorted(folder.rglob("*.jpg"))[:8]):
            (warm / f"{number}.jpg").write_bytes(image.read_bytes())
        fresh(scratch / f"warm-up-bundle-{backend}")
        calibration = ["--int8-calibration", str(folder)] if backend.endswith("int8") else []
        export_s, _ = run([*ours_build(warm, scratch / f"warm-up-bundle-{backend}", args, checkpoint, backend),
                           *calibration], ROOT)
        bundle = scratch / f"bundle-{backend}"
        fresh(bundle)
        ours_s, output = run([*ours_build(folder, bundle, args, checkpoint, backend), *calibration], ROOT)
        ran = RUNS_ON.search(output)
        emit(f"indexing, ours (indexer build --backend {backend})", images=args.images, seconds=ours_s,
             images_per_s=args.images / ours_s, speedup=ratio(theirs_s, ours_s),
             runs_on=ran.group(1) if ran else "torch", first_use_export_s=export_s)
        emit(f"top-10 agreement, {backend}", **agreement(args, scratch, checkpoint, bundle))


def fresh(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def generate_folder(folder: Path, count: int, workers: int) -> Path:
    if not folder.is_dir() or sum(1 for _ in folder.rglob("*.jpg")) != count:
        generate_jpegs(folder, count, 640, 480, workers)
    return folder


def agreement(args: argparse.Namespace, scratch: Path, checkpoint: Path, bundle: Path) -> dict[str, float | int]:
    """The same text queries against both indices: how many of each top 10 are the same files."""
    rng = np.random.default_rng(0)
    texts = [f"a photo of a {WORDS[first]} and a {WORDS[second]}"
             for first, second in rng.integers(0, len(WORDS), (args.queries, 2))]
    encoder = load_encoder(args.model, None, checkpoint, "cpu", backend="torch")
    queries = encoder.encode_texts(texts)
    service = open_service(encoder, bundle, verify_checksums=False)
    try:
        ours = [[str(Path(hit.item.uri).resolve()) for hit in
                 service.search_vector(QueryVector(query), Modality.IMAGE, 10).hits] for query in queries]
    finally:
        close_service(service)
    index = faiss.read_index(str(scratch / "index" / "image.index"))
    paths = [str(Path(path).resolve()) for table in sorted((scratch / "index" / "metadata").glob("*.parquet"))
             for path in pq.read_table(table, columns=["image_path"]).column("image_path").to_pylist()]
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), 10)
    theirs = [[paths[row] for row in rows if row >= 0] for rows in found]
    shared = [len(set(mine) & set(other)) / 10 for mine, other in zip(ours, theirs, strict=True)]
    same_order = sum(mine == other for mine, other in zip(ours, theirs, strict=True))
    return {"queries": len(texts), "mean_shared_of_10": float(np.mean(shared)), "min_shared_of_10": min(shared),
            "same_order": same_order}


def compare_memory(args: argparse.Namespace, scratch: Path, checkpoint: Path) -> None:
    dim = int(open_clip.get_model_config(args.model)["embed_dim"])
    vectors = unit_vectors(args.memory, dim, seed=0)
    index_folder = write_vectors_index(scratch, args, vectors)
    theirs, index_kind = serve_clip_retrieval(args, scratch, checkpoint, index_folder)
    emit("memory, clip-retrieval back", vectors=args.memory, index=index_kind, **theirs)
    bundle = write_vectors_bundle(scratch / "memory-bundle", args.model, checkpoint, vectors)
    calibration = generate_folder(scratch / "calibration", 64, args.workers)
    for backend in args.memory_backends:
        settings = {"CLIPSEARCH_CHECKPOINT": str(checkpoint), "CLIPSEARCH_BACKEND": backend,
                    "CLIPSEARCH_INT8_CALIBRATION": str(calibration)}
        with served(bundle, settings) as (url, server):
            httpx.post(f"{url}/search/text", json={"text": "a dog on the beach"}, timeout=120).raise_for_status()
            ours = resident_mb(server.pid)
            ran = httpx.get(f"{url}/info", timeout=30).json()["backend"]
        emit(f"memory, ours (python -m app, backend {backend})", vectors=args.memory, runs_on=ran, **ours,
             of_clip_retrievals=ratio(ours["rss_mb"], theirs["rss_mb"]))


def write_vectors_bundle(out: Path, model: str, checkpoint: Path, vectors: np.ndarray) -> Path:
    """`vectors` as the image items of a bundle of `model` from the weights file `checkpoint`."""
    ids = np.arange(len(vectors), dtype=np.int64)
    index, spec = faiss_index.build_index(vectors, ids, EXACT_FACTORY)
    records = (Item(id=int(item_id), modality=Modality.IMAGE, uri=f"synthetic/image/{item_id}",
                    text=f"synthetic image {item_id}", extra={}, content_hash=str(item_id)) for item_id in ids)
    write_bundle(out, ModelRef(model, checkpoint_sha256=file_sha256(checkpoint)), vectors.shape[1],
                 {Modality.IMAGE: ModalityContent(index=index, spec=spec)}, records, {"skipped": []},
                 {"bench": "vs_clip_retrieval"})
    return out


def write_vectors_index(scratch: Path, args: argparse.Namespace, vectors: np.ndarray) -> Path:
    """The same vectors as clip-retrieval's inference writes them (float16, with image_path metadata),
    indexed by its `index`."""
    embeddings = scratch / "memory-embeddings"
    fresh(embeddings, scratch / "memory-index", scratch / "memory-bundle")
    (embeddings / "img_emb").mkdir(parents=True, exist_ok=True)
    (embeddings / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(embeddings / "img_emb" / "img_emb_0.npy", vectors.astype(np.float16))
    pq.write_table(pa.table({"image_path": [f"synthetic/image/{number}" for number in range(len(vectors))]}),
                   embeddings / "metadata" / "metadata_0.parquet")
    index_folder = scratch / "memory-index"
    run([str(args.clip_retrieval), "index", "--embeddings_folder", str(embeddings), "--index_folder",
         str(index_folder)], scratch)
    return index_folder


def serve_clip_retrieval(args: argparse.Namespace, scratch: Path, checkpoint: Path,
                         index_folder: Path) -> tuple[dict[str, float], str]:
    """`clip-retrieval back` over the index, asked one text query; its resident memory and index kind."""
    paths = scratch / "indices_paths.json"
    paths.write_text(json.dumps({"bench": str(index_folder)}))
    port = free_port()
    log = (scratch / "clip-back.log").open("wb")
    back = subprocess.Popen([str(args.clip_retrieval), "back", "--port", str(port), "--indices_paths", str(paths),
                             "--clip_model", f"open_clip:{args.model}/{checkpoint}", "--enable_mclip_option", "False",
                             "--use_jit", "False", "--provide_aesthetic_embeddings", "False",
                             "--columns_to_return", '["image_path"]'], cwd=scratch, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/indices-list", back, scratch / "clip-back.log", 600)
        answer = httpx.post(f"{url}/knn-service", json={"text": "a dog on the beach", "modality": "image",
                                                        "num_images": 10, "indice_name": "bench"}, timeout=120)
        answer.raise_for_status()
        return resident_mb(back.pid), json.loads((index_folder / "image.json").read_text())["index_key"]
    finally:
        back.terminate()
        try:
            back.wait(timeout=30)
        except subprocess.TimeoutExpired:
            back.kill()
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
