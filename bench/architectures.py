"""The multilingual presets' architectures with random weights, built offline for timing them.

Their text towers and tokenizers come from Hugging Face, which these machines cannot reach, and the
speed of a forward pass depends on the architecture and the number of tokens, not on the weights.
So each preset is rebuilt here from its published architecture (the text models' config.json
values, written out below) through the service's own loading path, with the tokenizer of the offline
tiny models, which splits Chinese into single characters: a Chinese query then has at least as many
tokens as the real tokenizers give it (XLM-R's SentencePiece and Chinese-CLIP's WordPiece join
characters into words), so its timing errs on the slow side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import torch

from clipsearch.model.chinese_clip import OFFLINE_DIR as TINY_CHINESE_CLIP
from clipsearch.model.encoder import CONFIG_DIR, ClipEncoder
from clipsearch.model.factory import load_encoder

TINY_MULTILINGUAL = CONFIG_DIR / "hf" / "tiny-multilingual"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

XLM_ROBERTA = {"model_type": "xlm-roberta", "vocab_size": 250002, "max_position_embeddings": 514,
               "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5,
               "hidden_act": "gelu"}
TEXT_TOWERS = {
    "xlm-roberta-base": XLM_ROBERTA | {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                       "intermediate_size": 3072},
    "xlm-roberta-large": XLM_ROBERTA | {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                        "intermediate_size": 4096},
}
"""xlm-roberta-base's and xlm-roberta-large's config.json on Hugging Face."""
CHINESE_CLIP_BASE = {
    "model_type": "chinese_clip", "projection_dim": 512,
    # RoBERTa-wwm-ext-base-chinese, and ViT-B/16 at 224 pixels (OFA-Sys/chinese-clip-vit-base-patch16).
    "text_config": {"vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
                    "pad_token_id": 0},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "projection_dim": 512},
}


def open_clip_preset(name: str, work: Path) -> ClipEncoder:
    """open_clip's `name` (a model whose text tower is one of TEXT_TOWERS) with random weights."""
    config = open_clip.get_model_config(name)
    text = config["text_cfg"]
    tower = work / text["hf_model_name"]
    tower.mkdir(parents=True, exist_ok=True)
    (tower / "config.json").write_text(json.dumps(TEXT_TOWERS[text["hf_model_name"]]))
    for file in TOKENIZER_FILES:
        shutil.copyfile(TINY_MULTILINGUAL / file, tower / file)
    text["hf_model_name"] = text["hf_tokenizer_name"] = str(tower)
    rebuilt = work / f"offline-{name}.json"
    rebuilt.write_text(json.dumps(config))
    open_clip.add_model_config(rebuilt)
    return load_encoder(rebuilt.stem, pretrained=None, device="cpu", backend="torch")


def chinese_clip_base(work: Path) -> ClipEncoder:
    """chinese-clip-vit-base-patch16 with random weights, loaded as its Hugging Face directory would be."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    directory = work / "chinese-clip-vit-base-patch16"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ChineseCLIPModel(ChineseCLIPConfig(**CHINESE_CLIP_BASE)).save_pretrained(directory)  # type: ignore[no-untyped-call]
    processor = json.loads((TINY_CHINESE_CLIP / "preprocessor_config.json").read_text())
    processor["size"] = {"height": 224, "width": 224}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    for file in TOKENIZER_FILES:
        shutil.copyfile(TINY_CHINESE_CLIP / file, directory / file)
    return load_encoder("chinese-clip-vit-base-patch16", pretrained=str(directory), device="cpu", backend="torch")
