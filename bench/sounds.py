"""Indexing sounds: generated recordings read, resampled, cut into windows and embedded by CLAP, against
the audio tower alone and the reading alone, in the same run.

    python -m bench.sounds --recordings 20 --seconds 180 --model clap-htsat-unfused-size

Generates MP3s (44.1 kHz stereo, about 128 kb/s, like a music or podcast library; tones, chirps and
noise that change every few seconds), then measures:
  * reading, decoding and resampling them to the model's 48 kHz mono alone (audio-seconds/s),
  * the audio tower alone on windows already decoded (windows/s, and what that is in audio-seconds/s at
    the build's 5 s hop),
  * the whole `build` of them (read, resample, cut, embed, write, index), end to end,
  * with --videos, generated videos with a sound track, built with their pictures only and then with
    their sound tracks too (`--video-sound`): what the tracks add, against the sound files' rate,
and prints one JSON line per figure with the ratios. `--model clap-htsat-unfused-size` is transformers'
ClapModel at LAION's clap-htsat-unfused's size (HTSAT, 768 wide, 2-2-6-2 blocks; a RoBERTa text tower)
with random weights, saved to a local directory and loaded from it as a local checkpoint is: the same
work as the pretrained model, no download. `--model tiny-clap` is the tests' tiny one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.common import emit, encode_sound, ratio, synthetic_sound
from bench.indexing import write_video
from clipsearch.config import OFFLINE_AUDIO_MODEL, AudioSampling
from clipsearch.ingest.build import build
from clipsearch.ingest.config import BuildConfig
from clipsearch.model.audio import OFFLINE_DIR, load_audio_encoder
from clipsearch.util.audio import read_audio, window_spans

REAL_SIZE = "clap-htsat-unfused-size"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", type=int, default=20, help="MP3s to generate and index")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each recording")
    parser.add_argument("--model", default=REAL_SIZE, choices=[REAL_SIZE, OFFLINE_AUDIO_MODEL])
    parser.add_argument("--batch-size", type=int, default=32, help="windows per pass of the audio tower")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reading worker processes")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--videos", type=int, default=0,
                        help="also generate this many 640×480 H.264 videos with an AAC sound track, and build them "
                             "with and without their sound tracks indexed (--video-sound)")
    parser.add_argument("--video-seconds", type=float, default=60.0, help="length of each generated video")
    parser.add_argument("--image-model", default="ViT-B-32",
                        help="the open_clip model (random weights) that embeds the videos' pictures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = real_size_model(root / "model") if args.model == REAL_SIZE else OFFLINE_AUDIO_MODEL
        folder = root / "sounds"
        folder.mkdir()
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            sizes = list(pool.map(_write_recording, [(folder / f"{number:05d}.mp3", number, args.seconds)
                                                     for number in range(args.recordings)]))
        audio_s = args.recordings * args.seconds
        emit("generated", recordings=args.recordings, seconds_each=args.seconds, mean_kb=np.mean(sizes) / 1024,
             seconds=time.perf_counter() - started)

        load_started = time.perf_counter()
        encoder = load_audio_encoder(model, args.device)
        load_s = time.perf_counter() - load_started
        emit("setup", model=args.model, device=str(encoder.device), dtype=str(encoder.dtype),
             gpu=torch.cuda.get_device_name(encoder.device) if encoder.device.type == "cuda" else None,
             batch_size=args.batch_size, workers=args.workers, cpus=os.cpu_count(), model_load_s=load_s)

        reading_started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            read = sum(pool.map(_read, sorted(folder.iterdir())))
        reading_s = time.perf_counter() - reading_started
        reading = read / reading_s
        emit("read + decode + resample alone", audio_seconds_per_s=reading, workers=args.workers)

        hop = AudioSampling().hop_s
        windows = [np.random.default_rng(number).uniform(-0.3, 0.3, int(encoder.window_s * encoder.sampling_rate))
                   .astype(np.float32) for number in range(args.batch_size)]
        encoder.encode_audio(windows[:2])  # warm up
        passes = max(1, min(8, (args.recordings * len(window_spans(args.seconds, encoder.window_s, hop)))
                            // args.batch_size))
        tower_started = time.perf_counter()
        for _ in range(passes):
            encoder.encode_audio(windows)
        tower = passes * args.batch_size / (time.perf_counter() - tower_started)
        emit("audio tower alone", windows_per_s=tower, audio_seconds_per_s=tower * hop,
             note=f"10 s windows every {hop:g} s: each window stands for {hop:g} s of a long recording")
        del encoder

        config = BuildConfig(out=root / "bundle", audio=folder, sound=AudioSampling(model=model), model="tiny",
                             pretrained=None, device=args.device, batch_size=args.batch_size, workers=args.workers,
                             progress=False)
        build_started = time.perf_counter()
        summary = build(config)
        total_s = time.perf_counter() - build_started
        indexing_s = max(total_s - load_s, 1e-9)  # build() loads the model again: that fixed cost is left out
        end_to_end = audio_s / indexing_s
        emit("sound indexing end to end", recordings=summary.indexed.get("audio", 0), skipped=summary.skipped,
             seconds=indexing_s, seconds_with_model_load=total_s, audio_seconds_per_s=end_to_end,
             vs_reading=ratio(end_to_end, reading),
             vs_tower=ratio(end_to_end, tower * hop))
        tracks = video_track_figures(args, root, model, load_s, end_to_end) if args.videos else args.videos
    return 0 if summary.indexed.get("audio", 0) == args.recordings and tracks == args.videos else 1


def video_track_figures(args: argparse.Namespace, root: Path, model: str, audio_load_s: float,
                        sounds_per_s: float) -> int:
    """Generate videos with sound tracks, build them with their pictures only and with their sound
    tracks too: what the tracks add, against the pictures alone and the sound files' rate of this run.
    Returns how many sound tracks were indexed."""
    folder = root / "videos"
    folder.mkdir()
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        sizes = list(pool.map(write_video, [(folder / f"{number:05d}.mp4", number, args.video_seconds, 25, 4.0, 640,
                                             480, True) for number in range(args.videos)]))
    emit("generated videos", videos=args.videos, seconds_each=args.video_seconds, mean_mb=np.mean(sizes) / 2**20,
         seconds=time.perf_counter() - started)
    seconds: dict[bool, float] = {}
    for video_sound in (False, True):
        config = BuildConfig(out=root / f"videos-{video_sound}", videos=folder,
                             sound=AudioSampling(model=model, video_sound=video_sound), model=args.image_model,
                             pretrained=None, device=args.device, batch_size=args.batch_size, workers=args.workers,
                             progress=False)
        build_started = time.perf_counter()
        summary = build(config)
        # The audio model's load is timed apart (setup), as the sound files' build leaves it out.
        seconds[video_sound] = time.perf_counter() - build_started - (audio_load_s if video_sound else 0.0)
    tracks = summary.indexed.get("audio", 0)
    extra = seconds[True] - seconds[False]
    # None where the tracks cost less than the timing's noise (the tiny models of the smoke test).
    track_rate = tracks * args.video_seconds / extra if extra > 0 else None
    emit("videos' sound tracks", videos=summary.indexed.get("video", 0), tracks=tracks,
         pictures_only_s=seconds[False], with_tracks_s=seconds[True], tracks_s=extra,
         track_audio_seconds_per_s=track_rate,
         vs_sound_files=None if track_rate is None else ratio(track_rate, sounds_per_s),
         with_tracks_vs_pictures_only=ratio(seconds[True], seconds[False]),
         note="the build's seconds with the tracks over those without; the tracks' rate against sound files'")
    return int(tracks)


def real_size_model(folder: Path) -> str:
    """A local directory holding ClapModel at clap-htsat-unfused's size with random (seeded) weights, the
    tiny model's tokenizer and the real model's feature extractor (model_configs/hf/tiny-clap)."""
    from transformers import ClapConfig, ClapModel

    torch.manual_seed(0)
    ClapModel(ClapConfig(projection_dim=512)).save_pretrained(folder)  # type: ignore[no-untyped-call]
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(OFFLINE_DIR / name, folder / name)
    return str(folder)


def _write_recording(task: tuple[Path, int, float]) -> int:
    """An MP3 of `seconds` (bench.common.synthetic_sound), the same on both channels."""
    import av

    path, seed, seconds = task
    rate = 44_100
    with av.open(str(path), mode="w", format="mp3") as output:
        stream = output.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.bit_rate = 128_000
        encode_sound(output, stream, synthetic_sound(seed, seconds, rate), rate, 2, 1152 * 8)
    return path.stat().st_size


def _read(path: Path) -> float:
    """Seconds of sound in one recording, read as the build reads it."""
    return read_audio(path, 48_000).duration_s


if __name__ == "__main__":
    sys.exit(main())
