"""Indexing sounds: generated recordings read, resampled, cut into windows and embedded by CLAP, against
the audio tower alone and the reading alone, in the same run.

    python -m bench.sounds --recordings 20 --seconds 180 --model clap-htsat-unfused-size

Generates MP3s (44.1 kHz stereo, about 128 kb/s, like a music or podcast library; tones, chirps and
noise that change every few seconds), then measures:
  * reading, decoding and resampling them to the model's 48 kHz mono alone (audio-seconds/s),
  * the audio tower alone on windows already decoded (windows/s, and what that is in audio-seconds/s at
    the build's 5 s hop),
  * the whole `build` of them (read, resample, cut, embed, write, index), end to end,
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

from bench.common import emit, ratio
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
    return 0 if summary.indexed.get("audio", 0) == args.recordings else 1


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
    """An MP3 of `seconds`: a new sound every 2 to 8 s (a tone, a chirp or noise), the same on both channels."""
    import av

    path, seed, seconds = task
    rng = np.random.default_rng(seed)
    rate = 44_100
    pieces, made = [], 0.0
    while made < seconds:
        length = min(float(rng.uniform(2, 8)), seconds - made)
        times = np.arange(int(length * rate)) / rate
        kind = int(rng.integers(3))
        if kind == 0:
            piece = np.sin(2 * np.pi * rng.uniform(100, 4000) * times)
        elif kind == 1:
            start, stop = rng.uniform(100, 4000, 2)
            piece = np.sin(2 * np.pi * (start * times + (stop - start) * times ** 2 / (2 * length)))
        else:
            piece = rng.uniform(-1, 1, len(times))
        pieces.append(0.3 * piece)
        made += length
    samples = np.concatenate(pieces).astype(np.float32)
    with av.open(str(path), mode="w", format="mp3") as output:
        stream = output.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.bit_rate = 128_000
        planar = np.ascontiguousarray(np.stack([samples, samples]))
        for start in range(0, planar.shape[1], 1152 * 8):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + 1152 * 8]),
                                               format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path.stat().st_size


def _read(path: Path) -> float:
    """Seconds of sound in one recording, read as the build reads it."""
    return read_audio(path, 48_000).duration_s


if __name__ == "__main__":
    sys.exit(main())
