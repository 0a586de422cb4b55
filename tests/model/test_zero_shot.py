"""Zero-shot labels: the model's own calibration, a label cache, and clear refusals of bad labels."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.config import QueryLimits
from clipsearch.errors import InvalidQuery
from clipsearch.model.encoder import ClipEncoder
from clipsearch.model.zero_shot import (
    DEFAULT_TEMPLATES,
    NULL_LABEL,
    Calibration,
    LabelEmbeddings,
    ZeroShotClassifier,
    label_probabilities,
)
from tests.support.imagefiles import noise_image

LABELS = ["a cat", "a dog", "a red car", "the sea"]


@pytest.fixture()
def classifier(encoder: ClipEncoder) -> ZeroShotClassifier:
    limits = QueryLimits(max_labels=5, max_templates=len(DEFAULT_TEMPLATES))
    return ZeroShotClassifier(Calibration.of(encoder.logit_scale, encoder.logit_bias), encoder.encode_texts, limits)


@pytest.fixture()
def images(encoder: ClipEncoder) -> np.ndarray:
    return encoder.encode_images([noise_image(seed) for seed in range(3)])


def _label_vector(encoder: ClipEncoder, label: str, templates: tuple[str, ...]) -> np.ndarray:
    mean = encoder.encode_texts([template.format(label) for template in templates]).astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_single_label_probabilities_are_the_softmax_of_the_models_scaled_cosines(
        classifier: ZeroShotClassifier, encoder: ClipEncoder, images: np.ndarray) -> None:
    scale = float(encoder.model.logit_scale.detach().exp())
    ranked = classifier.classify(images, LABELS)
    for image, labels in zip(images, ranked, strict=True):
        cosines = np.array([image @ _label_vector(encoder, label, DEFAULT_TEMPLATES) for label in LABELS])
        expected = np.exp(scale * cosines) / np.exp(scale * cosines).sum()
        by_label = {score.label: score for score in labels}
        assert [by_label[label].probability for label in LABELS] == pytest.approx(expected, abs=1e-5)
        assert [by_label[label].cosine for label in LABELS] == pytest.approx(cosines, abs=1e-5)
        assert sum(score.probability for score in labels) == pytest.approx(1.0)
        assert [score.probability for score in labels] == sorted((s.probability for s in labels), reverse=True)


def test_multi_label_scores_each_label_on_its_own_against_the_generic_label(
        classifier: ZeroShotClassifier, encoder: ClipEncoder, images: np.ndarray) -> None:
    alone = {score.label: score.probability for score in classifier.classify(images[:1], LABELS[:1], None, True)[0]}
    together = {score.label: score.probability for score in classifier.classify(images[:1], LABELS, None, True)[0]}
    assert together["a cat"] == pytest.approx(alone["a cat"]), "other labels do not change a label's score"
    scale = float(encoder.model.logit_scale.detach().exp())
    margin = images[0] @ _label_vector(encoder, "a cat", DEFAULT_TEMPLATES) \
        - images[0] @ _label_vector(encoder, NULL_LABEL, DEFAULT_TEMPLATES)
    assert together["a cat"] == pytest.approx(1 / (1 + np.exp(-scale * margin)), abs=1e-5)


def test_a_sigmoid_trained_model_uses_its_logit_bias() -> None:
    calibration = Calibration.of(float(np.log(10.0)), -2.0)
    assert (calibration.scale, calibration.bias) == pytest.approx((10.0, -2.0))
    cosines = np.array([[0.1, 0.3]])
    assert label_probabilities(cosines, calibration, multi_label=True)[0] == \
        pytest.approx(1 / (1 + np.exp(-(10 * cosines[0] - 2))))
    softmax = label_probabilities(cosines, calibration, multi_label=False)[0]
    assert softmax == pytest.approx(np.exp([1.0, 3.0]) / np.exp([1.0, 3.0]).sum()), "the bias cancels in a softmax"


def test_label_embeddings_are_cached_by_label_and_templates(encoder: ClipEncoder) -> None:
    prompts: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        prompts.extend(texts)
        return encoder.encode_texts(texts)

    cache = LabelEmbeddings(embed)
    first = cache.embeddings(["cat", "dog"], ("a {}", "the {}"))
    again = cache.embeddings(["dog", "cat"], ("a {}", "the {}"))
    assert prompts == ["a cat", "the cat", "a dog", "the dog"], "the second call embedded nothing"
    assert (cache.hits, cache.misses) == (2, 2)
    assert np.array_equal(again, first[::-1])
    cache.embeddings(["cat"], ("a photo of a {}",))
    assert prompts[-1] == "a photo of a cat", "other templates are another entry"


@pytest.mark.parametrize(("labels", "templates", "field", "reason"), [
    ([], None, "labels", "at least one label"),
    (["a", "b", "c", "d", "e", "f"], None, "labels", "at most 5 labels"),
    (["cat", "  "], None, "labels[1]", "must not be empty"),
    (["cat", "dog", " Cat"], None, "labels[2]", "repeats labels[0]"),
    (["cat"], ["a photo"], "templates[0]", "'{}' exactly once"),
    (["cat"], ["a {} {}"], "templates[0]", "'{}' exactly once"),
    (["cat"], [], "templates", "at least one template"),
    (["cat"], ["{}"] * 9, "templates", "at most 8 templates"),
])
def test_unusable_labels_are_refused_naming_the_entry(classifier: ZeroShotClassifier, images: np.ndarray,
                                                      labels: list[str], templates: list[str] | None, field: str,
                                                      reason: str) -> None:
    with pytest.raises(InvalidQuery) as refused:
        classifier.classify(images, labels, templates)
    assert refused.value.field == field and reason in refused.value.reason
