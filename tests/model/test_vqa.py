"""Visual question answering: a tiny BLIP runs the real transformers path, with random weights."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

from clipsearch.config import VqaConfig
from clipsearch.errors import InvalidQuery, ModelLoadError
from clipsearch.model.vqa import (
    OFFLINE_DIR,
    OFFLINE_VQA_MODEL,
    Answerer,
    AskService,
    Question,
    answerer_of,
    checked_question,
    load_answerer,
)
from tests.support.imagefiles import noise_image

TINY = VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu")
QUESTIONS = ["is there a dog?", "what colour is the big circle in the middle of the picture?", "how many?", "why",
             "are there two squares or three squares here, and which is larger?", "where is it"]


@pytest.fixture(scope="module")
def answerer() -> Answerer:
    return load_answerer(TINY)


def test_each_question_gets_an_answer_and_its_probability(answerer: Answerer) -> None:
    answers = answerer.ask([(noise_image(seed), question) for seed, question in enumerate(QUESTIONS)])
    assert len(answers) == len(QUESTIONS)
    for answer in answers:
        assert isinstance(answer.text, str) and "[SEP]" not in answer.text and "[DEC]" not in answer.text
        assert 0.0 < answer.score <= 1.0
    assert len({answer.text for answer in answers}) > 1  # the answer depends on the image and the question
    assert answerer.ask([]) == []


def test_a_question_is_answered_the_same_alone_or_batched_with_longer_ones(answerer: Answerer) -> None:
    pairs = [(noise_image(seed), question) for seed, question in enumerate(QUESTIONS)]
    batched = answerer.ask(pairs)
    alone = [answerer.ask([pair])[0] for pair in pairs]
    assert [answer.text for answer in batched] == [answer.text for answer in alone]
    assert [answer.score for answer in batched] == pytest.approx([answer.score for answer in alone], rel=1e-4)


def test_the_decoder_ignores_the_padding_of_a_shorter_question(answerer: Answerer) -> None:
    """transformers' BLIP text layer drops the cross-attention mask; mask_cross_attention puts it back."""
    decoder = answerer.model.text_decoder
    generator = torch.Generator().manual_seed(0)
    question = torch.randn(1, 5, 64, generator=generator)
    padded = torch.cat([question, torch.randn(1, 4, 64, generator=generator)], dim=1)
    answer = torch.tensor([[answerer._start, 10, 11, 12]])
    with torch.no_grad():
        alone = decoder(input_ids=answer, encoder_hidden_states=question,
                        encoder_attention_mask=torch.ones(1, 5, dtype=torch.long)).logits
        beside_padding = decoder(input_ids=answer, encoder_hidden_states=padded,
                                 encoder_attention_mask=torch.tensor([[1] * 5 + [0] * 4])).logits
    assert torch.allclose(alone, beside_padding, atol=1e-5)


def test_greedy_answers_and_scores_match_a_token_by_token_reference() -> None:
    """Decoded here one token at a time, each the decoder's most probable next one, multiplying their
    probabilities: the batched generate-and-rescore path must give the same words and score."""
    greedy = load_answerer(VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu", beams=1))
    pairs = [(noise_image(seed), question) for seed, question in enumerate(QUESTIONS[:4])]
    answers = greedy.ask(pairs)
    model = greedy.model
    for (image, question), answer in zip(pairs, answers, strict=True):
        tokens = greedy.tokenizer([question], return_tensors="pt")
        pixels = greedy.prepare_image(image)[None].float().div(255).sub(greedy._mean).div(greedy._std)
        with torch.no_grad():
            seen = model.vision_model(pixel_values=pixels)[0]
            heard = model.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       encoder_hidden_states=seen, return_dict=False)[0]
            said, probability = [greedy._start], 1.0
            while len(said) <= greedy.config.max_answer_tokens and said[-1] != greedy._end:
                logits = model.text_decoder(input_ids=torch.tensor([said]), encoder_hidden_states=heard).logits
                chances = torch.softmax(logits[0, -1], dim=-1)
                said.append(int(chances.argmax()))
                probability *= float(chances[said[-1]])
        assert answer.text == " ".join(greedy.tokenizer.decode(said, skip_special_tokens=True).split())
        assert answer.score == pytest.approx(probability, rel=1e-3)


@pytest.mark.parametrize(("question", "reason"), [
    ("", "empty"), ("   ", "empty"), ("x" * 301, "at most 300"), ("这张图片里有狗吗?", "English"),
    ("Есть ли на фото собака?", "English"),
])
def test_a_question_that_cannot_be_answered_is_refused_naming_the_field(question: str, reason: str) -> None:
    with pytest.raises(InvalidQuery, match=reason) as refused:
        checked_question(question, 300, "ask")
    assert refused.value.field == "ask"


def test_an_english_question_may_quote_a_word_of_another_script() -> None:
    assert checked_question("  what does the sign  saying 猫 show? ", 300) == "what does the sign saying 猫 show?"


def test_a_model_that_is_not_blip_is_refused_naming_the_setting() -> None:
    with pytest.raises(ModelLoadError, match="BLIP") as refused:
        load_answerer(VqaConfig(model=str(OFFLINE_DIR.parent / "tiny-chinese-clip"), device="cpu"))
    assert refused.value.field == "vqa_model"
    with pytest.raises(ModelLoadError) as missing:
        load_answerer(VqaConfig(model="/nonexistent/blip", device="cpu"))
    assert missing.value.field == "vqa_model"


def test_without_transformers_the_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when absent
    with pytest.raises(ModelLoadError, match=r"\[vqa\] extra") as refused:
        load_answerer(TINY)
    assert refused.value.field == "vqa_model"


def test_the_service_batches_questions_from_concurrent_callers_into_the_same_answers(answerer: Answerer) -> None:
    service = AskService(TINY, max_batch=8)
    try:
        images = [noise_image(seed) for seed in range(len(QUESTIONS))]
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            answered = list(pool.map(lambda image, question: service.ask([image], question)[0], images, QUESTIONS))
        expected = [answerer.answer([Question(answerer.prepare_image(image), question)])[0]
                    for image, question in zip(images, QUESTIONS, strict=True)]
        assert [answer.text for answer in answered] == [answer.text for answer in expected]
    finally:
        service.close()


def test_in_fp16_as_on_a_gpu_the_answers_are_fp32s() -> None:
    """The GPU's half-precision path, run on the CPU: the same answers, probabilities within fp16's
    precision. Short answers: random weights make near-ties, which fp16 may tip many tokens in."""
    short = replace(TINY, max_answer_tokens=4)
    answerer, offline = load_answerer(short), load_answerer(short)
    half = answerer_of(offline.model, offline.tokenizer, offline.prepare_image.config, "half", offline.device, short,
                       half=True)
    assert next(half.model.parameters()).dtype == torch.float16
    pairs = [(noise_image(seed), question) for seed, question in enumerate(QUESTIONS)]
    full, halved = answerer.ask(pairs), half.ask(pairs)
    assert [answer.text for answer in halved] == [answer.text for answer in full]
    assert [answer.score for answer in halved] == pytest.approx([answer.score for answer in full], rel=0.05)


@pytest.mark.gpu
def test_on_a_gpu_answers_are_generated_in_fp16() -> None:
    gpu = load_answerer(VqaConfig(model=OFFLINE_VQA_MODEL, device="cuda"))
    assert next(gpu.model.parameters()).dtype == torch.float16
    answers = gpu.ask([(noise_image(seed), "is there a dog?") for seed in range(4)])
    assert len(answers) == 4 and all(0.0 <= answer.score <= 1.0 for answer in answers)
