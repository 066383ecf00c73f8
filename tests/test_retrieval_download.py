"""wiki-18 download helpers on local fixtures (the hub is unreachable here, as on CI)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
from test_retrieval_helpers import make_corpus, make_tiny_encoder, tiny_encoder_config

from search_r1.data.corpus import iter_corpus
from search_r1.retrieval import dense
from search_r1.retrieval.config import ServerConfig
from search_r1.retrieval.download import (
    CORPUS_FILE,
    INDEX_PARTS,
    DownloadConfig,
    DownloadError,
    download_wiki18,
)
from search_r1.retrieval.encoder import Encoder
from search_r1.retrieval.searchers import load_retriever


@pytest.fixture
def hub_mirror(tmp_path):
    """What the two HF datasets hold, in miniature: a gzipped corpus and a byte-split Flat index."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=60)
    with corpus.open("rb") as src, gzip.open(mirror / CORPUS_FILE, "wb") as dst:
        dst.write(src.read())
    enc_cfg = tiny_encoder_config(make_tiny_encoder(tmp_path / "enc"))
    emb = Encoder(enc_cfg).encode([d.contents for d in iter_corpus(corpus)], is_query=False)
    dense.build_faiss(emb, "Flat", tmp_path / "flat.index", train_size=60, chunk_size=64)
    raw = (tmp_path / "flat.index").read_bytes()
    half = len(raw) // 2
    (mirror / INDEX_PARTS[0]).write_bytes(raw[:half])
    (mirror / INDEX_PARTS[1]).write_bytes(raw[half:])
    return mirror, enc_cfg, list(iter_corpus(corpus))


def test_download_from_mirror_gives_a_servable_index(hub_mirror, tmp_path):
    mirror, enc_cfg, docs = hub_mirror
    cfg = DownloadConfig(
        raw_dir=str(tmp_path / "raw"), index_dir=str(tmp_path / "index"), mirror=str(mirror), encoder=enc_cfg
    )
    index_dir = download_wiki18(cfg)
    assert (tmp_path / "raw" / "wiki-18.jsonl").read_bytes() == gzip.decompress(
        (mirror / CORPUS_FILE).read_bytes()
    )
    assert not (tmp_path / "raw" / "part_aa").exists()  # joined and removed
    retriever = load_retriever(ServerConfig(index_dir=str(index_dir), backend="dense", encoder_device="cpu"))
    assert retriever.n_docs == 60
    hits = retriever.retrieve([docs[7].contents, docs[42].contents], 2)
    assert [h[0].id for h in hits] == [docs[7].id, docs[42].id]  # each passage finds itself first
    torch_engine = dense.open_engine(index_dir / "dense", engine="torch", gpu_devices=[], search_params="")
    q = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    np.testing.assert_array_equal(torch_engine.search(q, 3)[1], retriever._first.engine.search(q, 3)[1])
    assert download_wiki18(cfg) == index_dir  # second run: everything is there, nothing re-fetched


def test_mirror_missing_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = DownloadConfig(raw_dir=str(tmp_path / "raw"), mirror=str(tmp_path / "empty"))
    with pytest.raises(DownloadError, match="wiki-18.jsonl.gz.*not in the mirror"):
        download_wiki18(cfg)


def test_offline_hub_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "scripts/download_wiki18.py", f"raw_dir={tmp_path}", "index=false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    assert (
        "cannot download wiki-18.jsonl.gz from the Hugging Face dataset PeterJinGo/wiki-18-corpus" in r.stderr
    )
    assert "mirror" not in r.stdout and "Traceback" not in r.stderr
