"""Zero-shot classification: score images against labels the user names, with the model's own calibration.

A label's embedding is the renormalised mean of its prompts' embeddings, one prompt per template
("a photo of a {}."), as in CLIP's ImageNet evaluation; label embeddings are cached by label and
templates. Probabilities use the model's learnt temperature (`logit_scale`) and, for sigmoid-trained
models (SigLIP), its `logit_bias`; no scale is ever assumed.

- Single-label: softmax over the labels of `logit_scale · cos` (SigLIP's bias shifts every logit
  alike, so it cancels).
- Multi-label, each label scored on its own:
  - with a `logit_bias` (SigLIP), `sigmoid(logit_scale · cos + logit_bias)`: the probability the
    model was trained to give that an image and a text match;
  - without one (CLIP, trained with a softmax over a batch), a softmax that pits the label against
    one generic prompt (NULL_LABEL) only: `sigmoid(logit_scale · (cos − cos_null))`, the model's own
    answer to "this label, or just something?".
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery, ModelLoadError

DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
                     "a cropped photo of a {}.", "a bright photo of a {}.", "a photo of a small {}.",
                     "a photo of a large {}.", "art of the {}.")
"""A small ensemble in the manner of CLIP's ImageNet prompts; a template holds '{}' once."""

NULL_LABEL = "something"
"""The generic label a CLIP-style model's multi-label scores are measured against."""

MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    cosine: float
    """Cosine similarity between the image and the label's (template-averaged) embedding."""


@dataclass(frozen=True)
class Calibration:
    """How cosines become probabilities: the model's `logit_scale` (exp'd) and `logit_bias`, if any."""

    scale: float
    bias: float | None = None

    @classmethod
    def of(cls, logit_scale: float | None, logit_bias: float | None = None) -> Calibration:
        """From the model's parameters as learnt (the scale before it is exp'd; ClipEncoder keeps both)."""
        scale = math.exp(logit_scale) if logit_scale is not None and logit_scale < 700 else None
        if scale is None or not math.isfinite(scale):
            raise ModelLoadError("the model has no usable logit_scale, so it cannot give probabilities", "model")
        return cls(scale, logit_bias)

    @property
    def kind(self) -> str:
        return "sigmoid (logit_scale, logit_bias)" if self.bias is not None else "softmax (logit_scale)"


def check_labels(labels: Sequence[str], templates: Sequence[str], limits: QueryLimits,
                 field: str = "labels", templates_field: str = "templates") -> None:
    """Refuse unusable labels or templates before anything is embedded, naming the entry at fault."""
    if not labels:
        raise InvalidQuery(field, "give at least one label")
    if len(labels) > limits.max_labels:
        raise InvalidQuery(field, f"at most {limits.max_labels} labels, got {len(labels)}")
    seen: dict[str, int] = {}
    for number, label in enumerate(labels):
        name = f"{field}[{number}]"
        if not label.strip():
            raise InvalidQuery(name, "must not be empty or only whitespace")
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidQuery(name, f"at most {MAX_LABEL_CHARS} characters, got {len(label)}")
        if "\x00" in label:
            raise InvalidQuery(name, "must not contain NUL characters")
        normalised = " ".join(label.split()).casefold()
        if normalised in seen:
            raise InvalidQuery(name, f"repeats {field}[{seen[normalised]}] ({labels[seen[normalised]]!r}); "
                                     "every label must be different")
        seen[normalised] = number
    if not templates:
        raise InvalidQuery(templates_field, "give at least one template, or leave the field out for the defaults")
    if len(templates) > limits.max_templates:
        raise InvalidQuery(templates_field, f"at most {limits.max_templates} templates, got {len(templates)}")
    for number, template in enumerate(templates):
        if template.count("{}") != 1:
            raise InvalidQuery(f"{templates_field}[{number}]", "must hold '{}' exactly once, where the label goes")
        if len(template) > MAX_LABEL_CHARS:
            raise InvalidQuery(f"{templates_field}[{number}]", f"at most {MAX_LABEL_CHARS} characters")


class LabelEmbeddings:
    """Label embeddings (mean over templates, renormalised), cached by (label, templates); thread-safe.

    `embed_texts` embeds a list of prompts to unit rows (the encoder's text tower, or the server's
    batched pipeline). Least recently used entries are dropped past `max_entries`.
    """

    def __init__(self, embed_texts: Callable[[list[str]], np.ndarray], max_entries: int = 4096) -> None:
        self._embed_texts = embed_texts
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Unit label embeddings, float32 (len(labels), d), in the order given."""
        key_templates = tuple(templates)
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for label in labels:
                cached = self._cache.get((label, key_templates))
                if cached is not None:
                    self._cache.move_to_end((label, key_templates))
                    found[label] = cached
            self.hits += len(found)
            self.misses += len(labels) - len(found)
        missing = [label for label in labels if label not in found]
        if missing:
            # One call for every prompt of every missing label: they share forward passes.
            prompts = [template.format(label) for label in missing for template in key_templates]
            vectors = self._embed_texts(prompts).reshape(len(missing), len(key_templates), -1)
            means = vectors.astype(np.float64).mean(axis=1)
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
            with self._lock:
                for label, mean in zip(missing, means.astype(np.float32), strict=True):
                    found[label] = mean
                    self._cache[(label, key_templates)] = mean
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)
        return np.stack([found[label] for label in labels])


def label_probabilities(cosines: np.ndarray, calibration: Calibration, multi_label: bool,
                        null_cosines: np.ndarray | None = None) -> np.ndarray:
    """Probabilities from cosines (m images, n labels), float64 (m, n); see the module's docstring.

    `null_cosines` (m,), each image's cosine with NULL_LABEL, is needed for multi-label scores of
    a model without a logit_bias.
    """
    logits = calibration.scale * cosines.astype(np.float64)
    if not multi_label:
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))
    if calibration.bias is not None:
        return _sigmoid(logits + calibration.bias)
    if null_cosines is None:
        raise ValueError("multi-label scores of a model without logit_bias need the null label's cosines")
    return _sigmoid(logits - calibration.scale * null_cosines.astype(np.float64)[:, None])


def ranked(labels: Sequence[str], probabilities: np.ndarray, cosines: np.ndarray) -> list[LabelScore]:
    """One image's labels, most probable first (ties: the order given)."""
    order = sorted(range(len(labels)), key=lambda number: (-probabilities[number], number))
    return [LabelScore(labels[number], float(probabilities[number]), float(cosines[number])) for number in order]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logits)))  # no overflow warning for large |logits|


class ZeroShotClassifier:
    """Classifies image embeddings against labels; shared by the server and the indexer."""

    def __init__(self, calibration: Calibration, embed_texts: Callable[[list[str]], np.ndarray],
                 limits: QueryLimits | None = None) -> None:
        self.calibration = calibration
        self.limits = limits or QueryLimits()
        self.labels = LabelEmbeddings(embed_texts)

    def classify(self, image_vectors: np.ndarray, labels: Sequence[str], templates: Sequence[str] | None = None,
                 multi_label: bool = False, field: str = "labels") -> list[list[LabelScore]]:
        """Each image's labels with probability and cosine, best first; image_vectors: unit (m, d)."""
        templates = DEFAULT_TEMPLATES if templates is None else tuple(templates)
        check_labels(labels, templates, self.limits, field)
        label_vectors = self.labels.embeddings(labels, templates)
        cosines = image_vectors.astype(np.float32) @ label_vectors.T
        null = None
        if multi_label and self.calibration.bias is None:
            null = image_vectors.astype(np.float32) @ self.labels.embeddings([NULL_LABEL], templates)[0]
        probabilities = label_probabilities(cosines, self.calibration, multi_label, null)
        return [ranked(labels, row_probabilities, row_cosines)
                for row_probabilities, row_cosines in zip(probabilities, cosines, strict=True)]
