"""Fine-tuning a dual-tower model on a user's own image-caption pairs.

- Losses: "contrastive" is CLIP's symmetric InfoNCE over the batch (open_clip's ClipLoss, with the
  model's learned temperature); "triplet" is the max-violation margin loss of VSE++: each pair
  against the hardest negative in the batch, both ways.
- Either tower may be locked: a locked image tower with a tuned text tower is LiT-style tuning,
  cheap and robust for small data.
- AdamW (no decay on gains, biases and the temperature), linear warmup then cosine decay,
  gradient accumulation, mixed precision on CUDA, one seed for the split, the order and the
  captions drawn.
- A held-out split of the images is evaluated (clipsearch.quality.evaluate) before training and after
  each epoch; the weights of the best epoch by text→image R@5 (ties broken by mean rank) are kept,
  and training stops after `patience` epochs without improvement, or when `max_minutes` have passed.

Each epoch draws one of each image's captions, so a batch never holds the same image twice (a
second copy would be a false negative for the contrastive loss).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.errors import FinetuneError, SourceError
from clipsearch.ingest.loading import LoadedBatch, image_batches
from clipsearch.model.encoder import ClipEncoder
from clipsearch.quality.evaluate import PairedCorpus, RetrievalScores, encoder_functions, evaluate
from clipsearch.util.files import atomic_path
from clipsearch.util.progress import progress_bar

LOSSES = ("contrastive", "triplet")
SELECTION_METRIC = "text_to_image R@5 (ties: lower mean rank)"
PIXEL_CACHE_BYTES = 1 << 30
"""Training images are decoded once and kept in memory when they fit in this; else every epoch
decodes them again in the worker processes."""
MAX_LOGIT_SCALE = math.log(100)
"""open_clip's clamp on the learned temperature."""


@dataclass(frozen=True)
class FinetuneConfig:
    loss: str = "contrastive"
    margin: float = 0.2
    """The triplet loss's margin."""
    lock_image: bool = False
    lock_text: bool = False
    learning_rate: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    accumulate: int = 1
    """Batches whose gradients are summed before each optimiser step."""
    seed: int = 0
    held_out: float = 0.1
    """The images kept out of training for evaluation: a share (below 1) or a count."""
    patience: int = 3
    max_minutes: float | None = None
    workers: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    pairs_per_s: float
    scores: dict[str, Any]


@dataclass
class FinetuneResult:
    before: RetrievalScores
    after: RetrievalScores
    """The held-out figures of the weights kept: those of the best epoch (or the starting ones)."""
    best_epoch: int
    """0 when no epoch beat the starting weights (which are then kept)."""
    stopped: str
    epochs: list[EpochRecord] = field(default_factory=list)
    train_images: int = 0
    held_out_images: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"before": self.before.as_dict(), "after": self.after.as_dict(), "best_epoch": self.best_epoch,
                "stopped": self.stopped, "epochs": [asdict(record) for record in self.epochs],
                "train_images": self.train_images, "held_out_images": self.held_out_images,
                "selection_metric": SELECTION_METRIC}


def split_held_out(corpus: PairedCorpus, held_out: float, seed: int) -> tuple[PairedCorpus, PairedCorpus]:
    """(train, held out), split by image so that no image's captions land on both sides."""
    count = len(corpus.images)
    held = round(held_out * count) if held_out < 1 else int(held_out)
    if not 1 <= held < count - 1:
        raise FinetuneError(f"{held_out:g} leaves {held} of {count} images held out; at least 1 must be held out and "
                            "2 left to train on", "held_out")
    chosen = set(np.random.default_rng(seed).permutation(count)[:held].tolist())
    train = corpus.without({position: "held out" for position in chosen})
    evaluation = corpus.without({position: "trained on" for position in range(count) if position not in chosen})
    return (PairedCorpus(train.images, train.captions, train.caption_image),
            PairedCorpus(evaluation.images, evaluation.captions, evaluation.caption_image))


def finetune(encoder: ClipEncoder, corpus: PairedCorpus, config: FinetuneConfig, progress: bool = True,
             on_epoch: Callable[[EpochRecord], None] | None = None) -> FinetuneResult:
    """Tune `encoder`'s model in place on `corpus`; it holds the best weights when this returns."""
    _check(encoder, config)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train, held = split_held_out(corpus, config.held_out, config.seed)
    model = encoder.model
    scores = _held_out_scores(encoder, held, config)
    result = FinetuneResult(before=scores, after=scores, best_epoch=0, stopped="all epochs done",
                            train_images=len(train.images), held_out_images=len(held.images))
    pixels, captions_of = _training_data(encoder, train, config)
    best_state = copy.deepcopy(model.state_dict())
    best = _selection_key(scores)
    started = time.monotonic()
    deadline = started + config.max_minutes * 60 if config.max_minutes is not None else math.inf
    optimizer, schedule = _optimizer(model, config, steps_per_epoch=len(captions_of) // config.batch_size)
    loss_of = _loss_function(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=encoder.device.type == "cuda")
    since_best = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses, seen, epoch_started = [], 0, time.monotonic()
        order = rng.permutation(len(captions_of))
        batches = [rows for rows in np.array_split(order, range(config.batch_size, len(order), config.batch_size))
                   if len(rows) >= 2]  # a lone pair has no negative
        # Not cached: one loader streams the epoch's images in this order, decoded in the workers.
        stream = None if pixels is not None else image_batches(
            [train.images[int(row)] for row in order], encoder, 0, config.batch_size, config.workers,
            config.max_pixels)
        bar = progress_bar(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress,
                           dynamic_ncols=True)
        for step, rows in enumerate(bar, start=1):
            texts = [captions_of[row][int(rng.integers(len(captions_of[row])))] for row in rows]
            with torch.autocast("cuda", enabled=encoder.device.type == "cuda"):
                batch_pixels = pixels[torch.from_numpy(rows)] if pixels is not None else _streamed(stream, encoder)
                image_features = model.encode_image(encoder.model_input(batch_pixels), normalize=True)
                text_features = F.normalize(encoder.text_features(texts), dim=-1)
                loss = loss_of(image_features.float(), text_features.float(), model.logit_scale.exp())
            scaler.scale(loss / config.accumulate).backward()  # type: ignore[no-untyped-call]
            if step % config.accumulate == 0 or step == len(batches):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(float(loss.detach()))
            seen += len(rows)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", pairs_per_s=f"{seen / (time.monotonic() - epoch_started):.0f}")
            if time.monotonic() > deadline:
                break
        bar.close()
        scores = _held_out_scores(encoder, held, config)
        record = EpochRecord(epoch, float(np.mean(losses)), seen / (time.monotonic() - epoch_started),
                             scores.as_dict())
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if _selection_key(scores) > best:
            best, since_best, result.best_epoch, result.after = _selection_key(scores), 0, epoch, scores
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if time.monotonic() > deadline:
            result.stopped = f"time limit of {config.max_minutes:g} minutes"
            break
        if since_best >= config.patience:
            result.stopped = f"no better {SELECTION_METRIC} for {config.patience} epochs"
            break
    model.load_state_dict(best_state)
    model.eval()
    return result


def save_checkpoint(encoder: ClipEncoder, path: Path, metadata: dict[str, Any]) -> None:
    """The model's weights as a checkpoint open_clip loads (`--checkpoint`), with `metadata` (plain JSON
    values) beside them; written to a temporary file and renamed, so a crash leaves no half file."""
    state = {name: tensor.detach().to("cpu", torch.float32) if tensor.is_floating_point() else tensor.cpu()
             for name, tensor in encoder.model.state_dict().items()}
    with atomic_path(path) as temporary:
        torch.save({"state_dict": state, "clipsearch_finetune": metadata}, temporary)


def _check(encoder: ClipEncoder, config: FinetuneConfig) -> None:
    if config.loss not in LOSSES:
        raise FinetuneError(f"unknown loss {config.loss!r}; choose {' or '.join(LOSSES)}", "loss")
    if encoder.backend != "torch" or encoder.dtype != torch.float32:
        raise FinetuneError("fine-tuning needs the PyTorch backend with fp32 weights "
                            "(load_encoder(..., backend='torch', precision='fp32'))", "backend")
    if config.lock_image and config.lock_text:
        raise FinetuneError("with both towers locked nothing would be trained", "lock_text")
    if config.batch_size < 2:
        raise FinetuneError("a batch needs at least 2 pairs: the other pairs are the negatives", "batch_size")
    if not hasattr(encoder.model, "lock_image_tower"):
        raise FinetuneError(f"{type(encoder.model).__name__} is not a dual-tower open_clip model", "model")


def _selection_key(scores: RetrievalScores) -> tuple[float, float]:
    """Higher is better: R@5, then the mean rank, which keeps improving after R@5 saturates at 1 (a
    small held-out set reaches it early, and the epochs after it still learn)."""
    mean_rank = scores.text_to_image_mean_rank
    return scores.text_to_image[5], -mean_rank if mean_rank is not None else -math.inf


def _held_out_scores(encoder: ClipEncoder, held: PairedCorpus, config: FinetuneConfig) -> RetrievalScores:
    encoder.model.eval()
    scores, _ = evaluate(held, *encoder_functions(encoder, max(config.batch_size, 64), config.workers,
                                                  config.max_pixels, progress=False), device=encoder.device)
    return scores


def _training_data(encoder: ClipEncoder, train: PairedCorpus, config: FinetuneConfig
                   ) -> tuple[torch.Tensor | None, list[list[str]]]:
    """The decoded training pixels when they fit in PIXEL_CACHE_BYTES (else None), and each image's captions.

    Images that cannot be decoded are dropped here, with their captions."""
    captions_of: list[list[str]] = [[] for _ in train.images]
    for caption, owner in zip(train.captions, train.caption_image, strict=True):
        captions_of[int(owner)].append(caption)
    height, width = encoder.preprocess_config.size
    if len(train.images) * 3 * height * width > PIXEL_CACHE_BYTES:
        return None, captions_of
    decoded: list[torch.Tensor] = []
    kept: list[int] = []
    for batch in image_batches(train.images, encoder, 0, 256, config.workers, config.max_pixels):
        if batch.pixels is not None:
            decoded.append(batch.pixels)
            kept.extend(outcome.position for outcome in batch.decoded)
    if len(kept) < 2:
        raise SourceError("fewer than 2 training images could be decoded", "pairs")
    return torch.cat(decoded), [captions_of[position] for position in kept]


def _streamed(stream: Iterator[LoadedBatch] | None, encoder: ClipEncoder) -> torch.Tensor:
    """The next batch of the epoch's stream as uint8 pixels; an image that failed to decode is left blank."""
    assert stream is not None  # only called when the pixels are not cached
    loaded = next(stream)
    height, width = encoder.preprocess_config.size
    pixels = torch.zeros((len(loaded.outcomes), 3, height, width), dtype=torch.uint8)
    if loaded.pixels is not None:
        first = loaded.outcomes[0].position
        pixels[[outcome.position - first for outcome in loaded.decoded]] = loaded.pixels
    return pixels


def _optimizer(model: torch.nn.Module, config: FinetuneConfig, steps_per_epoch: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    if config.lock_image:
        model.lock_image_tower()  # type: ignore[operator]
    if config.lock_text:
        model.lock_text_tower()  # type: ignore[operator]
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    decayed = [parameter for name, parameter in trainable if parameter.ndim >= 2 and "logit_scale" not in name]
    others = [parameter for name, parameter in trainable if parameter.ndim < 2 or "logit_scale" in name]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": config.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=config.learning_rate)
    total = max(1, config.epochs * max(1, steps_per_epoch) // config.accumulate)
    warmup = min(config.warmup_steps, total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loss_function(model: Any, config: FinetuneConfig
                   ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.loss == "contrastive" and getattr(model, "logit_bias", None) is not None:
        # SigLIP scores pairs with a sigmoid and a learned bias, not CLIP's softmax: its own loss.
        siglip_loss = SigLipLoss()

        def siglip(images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return siglip_loss(images, texts, scale, model.logit_bias)  # type: ignore[no-any-return]

        return siglip
    if config.loss == "contrastive":
        clip_loss = ClipLoss()
        return lambda images, texts, scale: clip_loss(images, texts, scale)  # type: ignore[no-any-return]

    def triplet(images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        similarity = images @ texts.T
        positive = similarity.diagonal()
        negatives = similarity.masked_fill(torch.eye(len(images), dtype=torch.bool, device=images.device), -torch.inf)
        hardest_text, hardest_image = negatives.max(dim=1).values, negatives.max(dim=0).values
        violations = F.relu(config.margin - positive + hardest_text) + F.relu(config.margin - positive + hardest_image)
        return violations.mean()

    return triplet
