"""Download the predecessor's wiki-18 corpus and prebuilt e5 Flat index from the Hugging Face hub.

Files (as published with Search-R1):
- ``PeterJinGo/wiki-18-corpus``  → ``wiki-18.jsonl.gz`` (21M passages, ``{"id", "contents"}``)
- ``PeterJinGo/wiki-18-e5-index`` → ``part_aa``, ``part_ab`` (byte-split FAISS ``IndexFlatIP``,
  intfloat/e5-base-v2, mean pooling, normalised, ``query: `` prefix)

The parts are concatenated and the corpus decompressed by streaming, then wrapped into a servable
index folder (docstore + ``dense/index.faiss``). Offline, the hub call fails and a
:class:`DownloadError` says what could not be fetched and how to bring the files in by hand.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from search_r1.paths import HOME, INDEX_DIR
from search_r1.retrieval.build import import_faiss_index
from search_r1.retrieval.config import EncoderConfig

log = logging.getLogger(__name__)

CORPUS_REPO, CORPUS_FILE = "PeterJinGo/wiki-18-corpus", "wiki-18.jsonl.gz"
INDEX_REPO, INDEX_PARTS = "PeterJinGo/wiki-18-e5-index", ("part_aa", "part_ab")
E5 = EncoderConfig(
    model="intfloat/e5-base-v2",
    pooling="mean",
    normalize=True,
    query_prefix="query: ",
    passage_prefix="passage: ",
    max_length=256,
)

# fetch(repo_id, filename, local_dir) -> local path; injectable so tests run on local fixtures.
Fetch = Callable[[str, str, Path], Path]


class DownloadError(RuntimeError):
    """A file could not be fetched (offline, no access, or missing on the hub)."""


def hf_fetch(repo_id: str, filename: str, local_dir: Path) -> Path:
    """``hf_hub_download`` of a dataset file into ``local_dir`` (resumes partial downloads)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=local_dir)
        )
    except Exception as exc:  # offline mode, DNS, HTTP 4xx/5xx: all mean "not downloaded"
        raise DownloadError(
            f"cannot download {filename} from the Hugging Face dataset {repo_id} ({type(exc).__name__}: {exc}). "
            f"This needs internet access to huggingface.co (unset HF_HUB_OFFLINE); on an offline machine copy "
            f"the file to {local_dir / filename} and run this again."
        ) from exc


def _copy_stream(src, dst, total: int | None, desc: str) -> None:
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True) as bar:
        while chunk := src.read(1 << 24):
            dst.write(chunk)
            bar.update(len(chunk))


def _existing_or_fetch(fetch: Fetch, repo: str, name: str, raw_dir: Path) -> Path:
    path = raw_dir / name
    return path if path.exists() else fetch(repo, name, raw_dir)


def fetch_corpus(raw_dir: Path, fetch: Fetch = hf_fetch) -> Path:
    """``raw_dir/wiki-18.jsonl`` (downloaded and decompressed unless already there)."""
    out = raw_dir / "wiki-18.jsonl"
    if out.exists():
        return out
    gz = _existing_or_fetch(fetch, CORPUS_REPO, CORPUS_FILE, raw_dir)
    tmp = out.with_suffix(".tmp")
    with gzip.open(gz, "rb") as src, tmp.open("wb") as dst:
        _copy_stream(src, dst, None, "gunzip wiki-18")
    tmp.replace(out)
    return out


def fetch_e5_index(raw_dir: Path, fetch: Fetch = hf_fetch, keep_parts: bool = False) -> Path:
    """``raw_dir/e5_Flat.index`` (parts downloaded and concatenated unless already there)."""
    out = raw_dir / "e5_Flat.index"
    if out.exists():
        return out
    parts = [_existing_or_fetch(fetch, INDEX_REPO, name, raw_dir) for name in INDEX_PARTS]
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as dst:
        for p in parts:
            with p.open("rb") as src:
                _copy_stream(src, dst, p.stat().st_size, f"join {p.name}")
    tmp.replace(out)
    if not keep_parts:
        for p in parts:
            p.unlink()
    return out


@dataclass
class DownloadConfig:
    raw_dir: str = field(default=str(HOME / "wiki18"), metadata={"help": "where downloaded files go"})
    index_dir: str = field(
        default=str(INDEX_DIR / "wiki18"), metadata={"help": "servable index folder to create"}
    )
    corpus: bool = field(default=True, metadata={"help": "download the corpus"})
    index: bool = field(default=True, metadata={"help": "download the prebuilt e5 Flat index"})
    make_index_dir: bool = field(default=True, metadata={"help": "wrap corpus + FAISS file into index_dir"})
    keep_parts: bool = field(default=False, metadata={"help": "keep part_aa/part_ab after joining"})
    mirror: str | None = field(
        default=None,
        metadata={"help": "local folder holding the hub files (offline clusters); null = the hub"},
    )
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(**vars(E5)))


def mirror_fetch(mirror: Path) -> Fetch:
    """Fetch from a local folder with the hub's file names (no network)."""

    def fetch(repo_id: str, filename: str, local_dir: Path) -> Path:
        src = mirror / filename
        if not src.exists():
            raise DownloadError(f"{filename} (from {repo_id}) is not in the mirror folder {mirror}")
        local_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(src, local_dir / filename))

    return fetch


def download_wiki18(cfg: DownloadConfig, fetch: Fetch | None = None) -> Path | None:
    """Fetch what ``cfg`` asks for; returns the servable index folder when one was made."""
    fetch = fetch or (mirror_fetch(Path(cfg.mirror)) if cfg.mirror else hf_fetch)
    raw = Path(cfg.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    corpus = fetch_corpus(raw, fetch) if cfg.corpus else None
    index = fetch_e5_index(raw, fetch, cfg.keep_parts) if cfg.index else None
    if cfg.make_index_dir and corpus is not None and index is not None:
        return import_faiss_index(corpus, index, Path(cfg.index_dir), cfg.encoder)
    return None
