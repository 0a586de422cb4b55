"""Visual question answering's speed on this machine: answers per second, one question at a time,
batched across concurrent requests (the server's batcher), and for one search's results at once.

    python -m bench.ask                                   # tiny-blip-vqa and blip-vqa-base's architecture
    python -m bench.ask --architectures tiny --questions 64

`tiny` is the offline tiny-blip-vqa the tests use; `blip-vqa-base` is Salesforce/blip-vqa-base's
architecture (transformers' BlipConfig defaults: ViT-B/16 at 384 × 384, a 12-layer BERT question
encoder and answer decoder, about 385M parameters) with random weights, as no weights can be
downloaded here: the same arithmetic as the trained model, so the same speed, but random words.
Random weights rarely end an answer early, so every answer runs the full 10 tokens: a trained
model's short answers ("yes", "two") end sooner, so these are a floor for the decoder's share.

Every figure is measured in this run against the one-at-a-time baseline of the same model
(`speedup`); the machine is shared, so compare ratios, not absolute times between runs.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from bench.common import emit, synthetic_photo
from clipsearch.config import VqaConfig
from clipsearch.model.lazy import LazyBatchedModel
from clipsearch.model.preprocess import PreprocessConfig
from clipsearch.model.vqa import OFFLINE_DIR, OFFLINE_VQA_MODEL, Answer, Answerer, Question, answerer_of, load_answerer

QUESTIONS = ["is there a dog?", "what colour is the car?", "how many people are there?", "is it night?",
             "what is on the table?", "where was this taken?", "is the sky blue?", "what animal is this?"]


def blip_vqa_base(config: VqaConfig) -> Answerer:
    """blip-vqa-base's architecture with random weights, the tiny model's tokenizer (token ids are
    all the model reads), and blip-vqa-base's image preparation (384 × 384, no crop)."""
    from transformers import AutoTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BlipForQuestionAnswering(BlipConfig())  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(str(OFFLINE_DIR))  # type: ignore[no-untyped-call]
    preparation = PreprocessConfig.of_hf_processor(BlipImageProcessor())
    return answerer_of(model, tokenizer, preparation, "blip-vqa-base architecture (random weights)",
                       torch.device("cpu"), config)


def questions(answerer: Answerer, count: int) -> list[Question]:
    """`count` photo-like pictures (640 × 480), each with one of QUESTIONS."""
    return [Question(answerer.prepare_image(Image.open(io.BytesIO(synthetic_photo(number))).convert("RGB")),
                     QUESTIONS[number % len(QUESTIONS)]) for number in range(count)]


def measure(name: str, answerer: Answerer, count: int, clients: int, max_batch: int) -> None:
    asked = questions(answerer, count)
    answerer.answer(asked[:2])  # warm up
    started = time.perf_counter()
    alone = [answerer.answer([question])[0] for question in asked]
    alone_s = time.perf_counter() - started
    emit(f"{name}, one at a time", model=answerer.description, questions=count, answers_per_s=count / alone_s,
         ms_per_answer=1000 * alone_s / count)

    service: LazyBatchedModel[Answerer, Question, Answer] = LazyBatchedModel(
        lambda: answerer, lambda loaded: loaded.answer, what=answerer.description, task="answering", name="ask",
        max_batch=max_batch, timeout_s=3600)
    service.model()
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            batched = list(pool.map(lambda question: service.run([question])[0], asked))
        batched_s = time.perf_counter() - started
        mean_batch = service.mean_batch
    finally:
        service.close()
    same = sum(one.text == other.text for one, other in zip(alone, batched, strict=True))
    emit(f"{name}, batched across requests", clients=clients, max_batch=max_batch, mean_batch=mean_batch,
         answers_per_s=count / batched_s, speedup=alone_s / batched_s, same_answers=same, questions=count)

    page = asked[:max_batch]
    started = time.perf_counter()
    answerer.answer([Question(item.pixels, QUESTIONS[0]) for item in page])
    page_s = time.perf_counter() - started
    alone_page_s = alone_s * len(page) / count
    emit(f"{name}, one search's results", results=len(page), answers_per_s=len(page) / page_s,
         speedup=alone_page_s / page_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=["tiny", "blip-vqa-base"],
                        choices=["tiny", "blip-vqa-base"])
    parser.add_argument("--questions", type=int, default=16, help="questions per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests in the batched measurement")
    parser.add_argument("--max-batch", type=int, default=8, help="the batcher's largest batch (the server's 8)")
    parser.add_argument("--beams", type=int, default=VqaConfig().beams)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    config = VqaConfig(model=OFFLINE_VQA_MODEL, device="cpu", beams=args.beams)
    emit("setup", threads=torch.get_num_threads(), beams=args.beams, device="cpu")
    for name in args.architectures:
        answerer = load_answerer(config) if name == "tiny" else blip_vqa_base(config)
        measure(name, answerer, args.questions, args.clients, args.max_batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
