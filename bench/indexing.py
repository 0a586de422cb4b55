"""Indexing throughput: a folder of generated 640×480 JPEGs into a saved bundle, against the image tower alone.

    python -m bench.indexing --images 100000 --model ViT-B-32 --workers 16

Generates the JPEGs (bench.common.synthetic_photo: about 55 KB each, compressing like photos), then measures
in the same run:
  * the image tower alone on batches already on the device (the ceiling),
  * reading, decoding and preparing the files in the DataLoader workers without a model,
  * the whole `build` (read, decode, encode, write shards, index, write the bundle), end to end,
  * with --ray, the same build on `--engine ray` (a Ray instance started here, `--ray-actors`), against
    the local engine's, both counting their model loads (Ray's actors load theirs as they start),
  * with --videos, generated H.264 videos (a new scene every --scene-seconds, the camera panning
    in between): read, decoded and cut into segments alone (frames/s, video-seconds/s), then built
    end to end, against the image path's figures of the same run,
and prints one JSON line per figure with the ratios. The model has random weights (speed only);
no download is needed. Model loading is timed apart and left out of the end-to-end rate.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import emit, encode_sound, ratio, synthetic_photo, synthetic_sound, time_calls
from clipsearch.ingest.build import build, read_sources
from clipsearch.ingest.config import BuildConfig
from clipsearch.ingest.distributed import import_ray
from clipsearch.ingest.loading import image_batches
from clipsearch.modality import Modality
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.factory import load_encoder
from clipsearch.util.video import read_video

SOUND_RATE = 48_000
"""A generated video's sound track's rate, a phone's."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to generate and index")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (random weights)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode worker processes")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--folder", type=Path, help="keep the generated JPEGs here (default: a temporary folder)")
    parser.add_argument("--ray", action="store_true", help="also build with --engine ray (the [ray] extra)")
    parser.add_argument("--ray-actors", type=int, default=None, help="embedding actors for --ray")
    parser.add_argument("--videos", type=int, default=0,
                        help="also generate this many H.264 videos and index them (the [video] extra), against "
                             "the image path of the same run")
    parser.add_argument("--video-seconds", type=float, default=60.0, help="length of each generated video")
    parser.add_argument("--video-fps", type=int, default=25)
    parser.add_argument("--scene-seconds", type=float, default=4.0, help="a generated video cuts to a new scene "
                                                                         "this often (its camera pans in between)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch) / "images"
        started = time.perf_counter()
        total_bytes = generate_jpegs(folder, args.images, args.width, args.height, args.workers)
        emit("generated", images=args.images, width=args.width, height=args.height,
             mean_kb=total_bytes / args.images / 1024, seconds=time.perf_counter() - started)
        config = BuildConfig(out=Path(scratch) / "bundle", images=folder, model=args.model, pretrained=None,
                             device=args.device, batch_size=args.batch_size, workers=args.workers, progress=False)
        load_started = time.perf_counter()
        encoder = load_encoder(args.model, None, None, args.device)
        load_s = time.perf_counter() - load_started
        device = encoder.device
        emit("setup", device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
             model=args.model, dtype=str(encoder.dtype), batch_size=args.batch_size, workers=args.workers,
             cpus=os.cpu_count(), model_load_s=load_s)

        tower = tower_images_per_s(encoder, args.batch_size, min(args.images, 20 * args.batch_size))
        emit("image tower alone", images_per_s=tower, note="preprocessed batches already on the device")
        loading = loader_images_per_s(config, encoder)
        emit("read + decode + prepare alone", images_per_s=loading, workers=args.workers,
             vs_tower=ratio(loading, tower))
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()

        build_started = time.perf_counter()
        summary = build(config)
        total_s = time.perf_counter() - build_started
        # build() loads its own model; that fixed cost is measured above and left out of the rate.
        indexing_s = max(total_s - load_s, 1e-9)
        end_to_end = summary.indexed["image"] / indexing_s
        emit("indexing end to end", images=summary.indexed["image"], skipped=summary.skipped,
             seconds=indexing_s, seconds_with_model_load=total_s, images_per_s=end_to_end,
             vs_tower=ratio(end_to_end, tower), vs_loader=ratio(end_to_end, loading))
        indexed = [summary.indexed["image"]]
        if args.videos:
            indexed.append(video_figures(args, Path(scratch), load_s, end_to_end, loading))
        if args.ray:
            indexed.append(ray_build(replace(config, out=Path(scratch) / "ray-bundle", engine="ray",
                                             ray_actors=args.ray_actors), total_s))
    return 0 if indexed[0] == args.images and all(count > 0 for count in indexed) else 1


def video_figures(args: argparse.Namespace, scratch: Path, load_s: float, images_per_s: float,
                  image_loading_per_s: float) -> int:
    """Generate the videos, then measure reading and cutting them alone, and the whole build of them,
    against the image path's figures of this run; returns how many videos were indexed."""
    folder = scratch / "videos"
    folder.mkdir()
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        sizes = list(pool.map(write_video, [(folder / f"{number:05d}.mp4", number, args.video_seconds,
                                             args.video_fps, args.scene_seconds, args.width, args.height, False)
                                            for number in range(args.videos)]))
    emit("generated videos", videos=args.videos, seconds_each=args.video_seconds, fps=args.video_fps,
         width=args.width, height=args.height, scenes_each=int(np.ceil(args.video_seconds / args.scene_seconds)),
         mean_mb=sum(sizes) / len(sizes) / 2**20, seconds=time.perf_counter() - started)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        read = list(pool.map(_read_video, sorted(folder.iterdir())))
    reading_s = time.perf_counter() - started
    frames, video_s, segments = (sum(column) for column in zip(*read, strict=True))
    emit("read + decode + cut videos alone", frames_per_s=frames / reading_s, video_seconds_per_s=video_s / reading_s,
         segments=segments, segments_per_video=segments / args.videos, workers=args.workers,
         frames_vs_image_loading=ratio(frames / reading_s, image_loading_per_s),
         note="frames decoded per second against images read, decoded and prepared per second")
    config = BuildConfig(out=scratch / "video-bundle", videos=folder, model=args.model, pretrained=None,
                         device=args.device, batch_size=args.batch_size, workers=args.workers, progress=False)
    started = time.perf_counter()
    summary = build(config)
    seconds = max(time.perf_counter() - started - load_s, 1e-9)
    emit("video indexing end to end", videos=summary.indexed.get("video", 0), skipped=summary.skipped,
         seconds=seconds, frames_per_s=frames / seconds, video_seconds_per_s=video_s / seconds,
         segments_per_s=segments / seconds, segments_vs_images=ratio(segments / seconds, images_per_s),
         note="segments embedded per second against images indexed per second end to end")
    return summary.indexed.get("video", 0)


def write_video(task: tuple[Path, int, float, int, float, int, int, bool]) -> int:
    """An H.264 video (crf 23, like a phone's): a new scene every `scene_s`, each a synthetic photo
    twice the frame's size that the camera pans across; with `sound`, an AAC track at 48 kHz stereo
    (bench.common.synthetic_sound). Returns its size in bytes."""
    import av

    path, seed, seconds, fps, scene_s, width, height, sound = task
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Every stream is added before the first packet is written (the header names them all).
        track = output.add_stream("aac", rate=SOUND_RATE, layout="stereo") if sound else None
        scene_frames, scene = max(1, round(scene_s * fps)), None
        for number in range(round(seconds * fps)):
            if number % scene_frames == 0:
                photo = synthetic_photo(seed * 1000 + number // scene_frames, width * 2, height * 2)
                scene = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
            assert scene is not None
            offset = (number % scene_frames) * width // scene_frames
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[offset // 2:offset // 2 + height,
                                                                          offset:offset + width]), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if track is not None:
            encode_sound(output, track, synthetic_sound(seed, seconds, SOUND_RATE), SOUND_RATE, 2, 1024)
    return path.stat().st_size


def _read_video(path: Path) -> tuple[int, float, int]:
    """Frames decoded, seconds and segments of one video, read as the build reads it."""
    video = read_video(path)
    return video.decoded_frames, video.duration_s, len(video.segments)


def ray_build(config: BuildConfig, local_s: float) -> int:
    """The build on Ray, timed from a running Ray instance (whose start is timed apart); returns
    how many images it indexed."""
    ray = import_ray()
    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        summary = build(config)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    images = summary.indexed["image"]
    emit("indexing end to end on Ray", images=images, seconds_with_model_loads=seconds, ray_start_s=start_s,
         images_per_s=images / seconds, actors=config.ray_actors or "default",
         vs_local=ratio(local_s, seconds), note="local / Ray seconds, both with their model loads")
    return images


def generate_jpegs(folder: Path, count: int, width: int, height: int, workers: int) -> int:
    """Write `count` distinct JPEGs; returns their total size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, start, min(start + 500, count), width, height) for start in range(0, count, 500)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        return sum(pool.map(_write_jpegs, chunks))


def _write_jpegs(task: tuple[Path, int, int, int, int]) -> int:
    folder, start, stop, width, height = task
    written = 0
    for number in range(start, stop):
        path = folder / f"{number // 1000:04d}" / f"{number:07d}.jpg"
        path.parent.mkdir(exist_ok=True)
        written += path.write_bytes(synthetic_photo(number, width, height))
    return written


def tower_images_per_s(encoder: ClipEncoder, batch_size: int, images: int) -> float:
    size = encoder.image_size
    batch = torch.randn((batch_size, 3, size, size), device=encoder.device).to(encoder.dtype)
    calls = max(1, images // batch_size)
    seconds = time_calls(lambda: encoder.encode_images(batch), repeats=calls, warmup=2)
    return batch_size / float(np.median(seconds))


def loader_images_per_s(config: BuildConfig, encoder: ClipEncoder) -> float:
    items = read_sources(config)[Modality.IMAGE]
    started = time.perf_counter()
    batches = image_batches(items, encoder, 0, config.batch_size, config.workers, config.max_pixels)
    count = sum(len(batch.outcomes) for batch in batches)
    return count / (time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
