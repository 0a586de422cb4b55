"""Visual question answering with BLIP (transformers' BlipForQuestionAnswering): short English answers.

A dual tower can rank given answers but cannot read a question, so this is a small generative
model beside the search model: a ViT sees the image, a BERT encoder reads the question while
attending to the image, and a decoder writes the answer while attending to the question. It needs
transformers, which the `[vqa]` extra installs; without it, loading fails with a message that names
the extra. It loads only when asked for (clipsearch.model.lazy).

The decoding is BLIP's own (3 beams, at most 10 tokens), and the decoder attends to the question's
real tokens only, as in BLIP's code. transformers (4.55) lets it attend to the padding of shorter
questions in a batch too, twice over: its `generate` gives the decoder a mask of ones, and its text
attention layer passes a cross-attention mask on under the self-attention's name, where the layer
below reads only the other (`mask_cross_attention` corrects that). So a question's answer is the
same alone or batched with longer ones (a test checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipsearch.config import RANDOM_WEIGHTS_SEED, VqaConfig
from clipsearch.errors import InvalidQuery, ModelLoadError
from clipsearch.model.encoder import resolve_device, weights_dtype
from clipsearch.model.lazy import LazyBatchedModel
from clipsearch.model.preprocess import ImagePreparer, PreprocessConfig
from clipsearch.util.languages import reads_as_latin

OFFLINE_VQA_MODEL = "tiny-blip-vqa"
"""A tiny BLIP shipped in model_configs/hf/ (scripts/make-tiny-towers): random weights, for tests."""
OFFLINE_DIR = Path(__file__).parent / "model_configs" / "hf" / OFFLINE_VQA_MODEL
ANSWER_LANGUAGE = "English"
"""BLIP was trained on English questions (VQAv2) only."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    """The model's probability of this answer (every token of it, the end included), 0 to 1."""


@dataclass(frozen=True)
class Question:
    """One image, prepared (uint8, from `Answerer.prepare_image`), and the question asked about it."""

    pixels: torch.Tensor
    text: str


def checked_question(question: str, max_chars: int, field: str = "question") -> str:
    """The question with its spaces tidied; InvalidQuery naming `field` if it is empty, too long or
    not in English."""
    tidy = " ".join(question.split())
    if not tidy:
        raise InvalidQuery(field, "must not be empty")
    if len(tidy) > max_chars:
        raise InvalidQuery(field, f"must be at most {max_chars} characters, got {len(tidy)}")
    if not reads_as_latin(tidy):  # not English: BLIP would answer it with a guess
        raise InvalidQuery(field, f"the question-answering model understands {ANSWER_LANGUAGE} only; "
                                  f"ask in {ANSWER_LANGUAGE}")
    return tidy


class Answerer:
    """A BLIP question-answering model with its tokenizer and image preparation.

    Not thread-safe by itself: the server runs it from one batcher thread.
    """

    def __init__(self, model: Any, tokenizer: Any, preparation: PreprocessConfig, description: str,
                 device: torch.device, config: VqaConfig) -> None:
        self.model, self.tokenizer, self.description, self.device, self.config = (model, tokenizer, description,
                                                                                  device, config)
        self.prepare_image = ImagePreparer(preparation)
        self.dtype = weights_dtype(model)
        self._mean, self._std = (torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)
                                 for values in (preparation.mean, preparation.std))
        text_config = model.config.text_config
        self._start, self._end, self._pad = (int(model.decoder_start_token_id), int(text_config.sep_token_id),
                                             int(text_config.pad_token_id))

    def ask(self, pairs: Sequence[tuple[Image.Image, str]]) -> list[Answer]:
        """Answers to (image, question) pairs, in order, in one batch."""
        return self.answer([Question(self.prepare_image(image), question) for image, question in pairs])

    @torch.inference_mode()
    def answer(self, questions: Sequence[Question]) -> list[Answer]:
        if not questions:
            return []
        pixels = torch.stack([question.pixels for question in questions]).to(self.device)
        pixels = pixels.to(torch.float32).div_(255).sub_(self._mean).div_(self._std).to(self.dtype)
        tokens = self.tokenizer([question.text for question in questions], padding=True, truncation=True,
                                return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        image_states = self.model.vision_model(pixel_values=pixels)[0]
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device)
        question_states = self.model.text_encoder(input_ids=ids, attention_mask=mask,
                                                  encoder_hidden_states=image_states,
                                                  encoder_attention_mask=image_mask, return_dict=False)[0]
        starts = torch.full((len(questions), 1), self._start, dtype=torch.long, device=self.device)
        answers = self.model.text_decoder.generate(
            input_ids=starts, eos_token_id=self._end, pad_token_id=self._pad, num_beams=self.config.beams,
            max_new_tokens=self.config.max_answer_tokens, do_sample=False,
            encoder_hidden_states=question_states, encoder_attention_mask=mask)
        probabilities = self._probabilities(answers, question_states, mask)
        texts = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        return [Answer(" ".join(text.split()), float(probability))
                for text, probability in zip(texts, probabilities.tolist(), strict=True)]

    def _probabilities(self, answers: torch.Tensor, question_states: torch.Tensor,
                       question_mask: torch.Tensor) -> torch.Tensor:
        """Each answer's probability under the decoder, read back in one teacher-forced pass: every
        token after the start up to and including the first end token (padding after it aside)."""
        after_end = (answers == self._end).long().cumsum(dim=1)
        counted = (after_end - (answers == self._end).long()) == 0  # up to and including the first end
        counted[:, 0] = True
        logits = self.model.text_decoder(input_ids=answers, attention_mask=counted.long(),
                                         encoder_hidden_states=question_states,
                                         encoder_attention_mask=question_mask, return_dict=True).logits
        log_probabilities = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        chosen = log_probabilities.gather(-1, answers[:, 1:, None]).squeeze(-1)
        return torch.exp((chosen * counted[:, 1:]).sum(dim=1))


def load_answerer(config: VqaConfig) -> Answerer:
    """Load the question-answering model; ModelLoadError names what is wrong (the extra, the model)."""
    try:
        from transformers import AutoConfig, AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessor
    except ImportError as error:
        raise ModelLoadError("visual question answering needs Hugging Face transformers: install the [vqa] extra "
                             "(pip install 'clipsearch[vqa]')", "vqa_model") from error
    offline = config.model == OFFLINE_VQA_MODEL
    source = str(OFFLINE_DIR) if offline else config.model
    device = resolve_device(config.device)
    try:
        architecture = AutoConfig.from_pretrained(source)
        if architecture.model_type != "blip":
            raise ModelLoadError(f"{config.model!r} is a {architecture.model_type} model; give a BLIP "
                                 "question-answering model, such as Salesforce/blip-vqa-base or "
                                 "Salesforce/blip-vqa-capfilt-large", "vqa_model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = (BlipForQuestionAnswering(architecture) if offline
                     else BlipForQuestionAnswering.from_pretrained(source))
        tokenizer = AutoTokenizer.from_pretrained(source)  # type: ignore[no-untyped-call]
        preparation = PreprocessConfig.of_hf_processor(BlipImageProcessor.from_pretrained(source))
    except ModelLoadError:
        raise
    except Exception as error:  # transformers raises many kinds (OSError, ValueError, HTTP errors)
        raise ModelLoadError(f"cannot load the question-answering model {config.model!r}: {error}",
                             "vqa_model") from error
    description = f"{OFFLINE_VQA_MODEL} (random weights, seed {RANDOM_WEIGHTS_SEED})" if offline else config.model
    return answerer_of(model, tokenizer, preparation, description, device, config)


def mask_cross_attention(model: torch.nn.Module) -> None:
    """Make BLIP's text layers apply the mask they are given to their cross-attention.

    transformers' BlipTextAttention hands a cross-attention's mask to BlipTextSelfAttention as
    `attention_mask`, and that reads a cross-attention's mask from `encoder_attention_mask` only, so
    the mask is dropped and padding is attended to. A hook on each such layer passes it on where it
    is read; where a later transformers passes it itself, the hook changes nothing.
    """

    def pass_mask_on(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if kwargs.get("encoder_hidden_states") is not None and kwargs.get("encoder_attention_mask") is None:
            kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
        return args, kwargs

    for module in model.modules():
        if type(module).__name__ == "BlipTextSelfAttention":
            module.register_forward_pre_hook(pass_mask_on, with_kwargs=True)


def answerer_of(model: Any, tokenizer: Any, preparation: PreprocessConfig, description: str,
                device: torch.device, config: VqaConfig, half: bool | None = None) -> Answerer:
    """An Answerer over a BLIP model already built (the loader's, or bench.ask's random blip-vqa-base),
    in fp16 when `half` (by default on a GPU; the CPU tests run that path too)."""
    mask_cross_attention(model)
    model = model.to(device)
    if device.type == "cuda" if half is None else half:
        model = model.half()
    model.eval()
    log.info("loaded question-answering model %s on %s", description, device)
    return Answerer(model, tokenizer, preparation, description, device, config)


class AskService(LazyBatchedModel[Answerer, Question, Answer]):
    """Answers for the server: the model loads on the first question and runs in its own batcher
    (clipsearch.model.lazy), so questions from concurrent requests, and a search's hits, share batches."""

    def __init__(self, config: VqaConfig, max_batch: int = 8, timeout_s: float = 120.0) -> None:
        super().__init__(lambda: load_answerer(config), lambda answerer: answerer.answer,
                         what=f"the question-answering model {config.model}", task="answering",
                         name="ask", max_batch=max_batch, timeout_s=timeout_s)
        self.config = config

    def check(self, question: str, field: str = "question") -> str:
        return checked_question(question, self.config.max_question_chars, field)

    def ask(self, images: Sequence[Image.Image], question: str, field: str = "question") -> list[Answer]:
        """The answer to `question` (checked first, naming `field`) about each image."""
        text = self.check(question, field)
        answerer = self.model()
        return self.run([Question(answerer.prepare_image(image), text) for image in images])
