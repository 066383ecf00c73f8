"""Dense indexes: streamed embedding build with resume, FAISS by factory string, and search engines.

Build: passages are encoded chunk by chunk into a memory-mapped embedding file (fp16 by default);
``progress.json`` records how many rows are safely on disk, so an interrupted build of a 21M-passage
corpus resumes from the last chunk instead of starting over, and the vectors are never held in RAM
twice (the memmap is paged; FAISS holds the only in-memory copy when vectors are added in chunks).

Search engines:
- FAISS on CPU (any factory string; ``search_params`` such as ``nprobe=64`` or ``efSearch=128``);
- FAISS on GPU when faiss-gpu is installed, fp16, only on the devices the config names (the
  predecessor sharded over every visible GPU by default and fought the trainer for memory);
- exact search in PyTorch (fp16 matmul + top-k, chunked over the corpus) when GPUs are named but
  faiss-gpu is absent, or when asked for explicitly (also runs on CPU, which is how it is tested).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from search_r1.data.corpus import Doc
from search_r1.retrieval.embedding_cache import EmbeddingCache
from search_r1.retrieval.encoder import Encoder

log = logging.getLogger(__name__)

EMB_FILE = "embeddings.bin"
PROGRESS_FILE = "progress.json"
INDEX_FILE = "index.faiss"


def _encode_chunk(texts: list[str], encoder: Encoder, cache: EmbeddingCache | None) -> tuple[np.ndarray, int]:
    """The vectors of ``texts`` and how many came from ``cache``."""
    if cache is None:
        return encoder.encode(texts, is_query=False), 0
    found, missing = cache.lookup(texts)
    if missing:
        new = encoder.encode([texts[i] for i in missing], is_query=False)
        cache.add([texts[i] for i in missing], new)
        for i, vector in zip(missing, new, strict=True):
            found[i] = vector
    return np.stack(found), len(texts) - len(missing)


def encode_corpus(
    docs: Iterator[Doc],
    n_docs: int,
    encoder: Encoder,
    out_dir: Path,
    *,
    chunk_size: int,
    dtype: str,
    fingerprint: dict,
    cache: EmbeddingCache | None = None,
) -> np.memmap:
    """Encode ``docs`` into ``out_dir/embeddings.bin`` (shape ``n_docs × dim``), resuming if possible.

    ``fingerprint`` (corpus + encoder settings) must match the one stored with a partial build;
    otherwise the partial file is discarded, because mixing vectors from two encoders is silent garbage.
    Passages already in ``cache`` are not encoded again; the new ones are added to it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / PROGRESS_FILE
    shape = (n_docs, encoder.dim)
    done = 0
    if progress_path.exists() and (out_dir / EMB_FILE).exists():
        prev = json.loads(progress_path.read_text())
        if (
            prev.get("fingerprint") == fingerprint
            and prev.get("shape") == list(shape)
            and prev.get("dtype") == dtype
        ):
            done = int(prev["rows_done"])
            if done:
                log.info("resuming dense encoding at row %d / %d", done, n_docs)
        else:
            log.warning("discarding partial embeddings built with different settings")
    mode = "r+" if done else "w+"
    emb = np.memmap(out_dir / EMB_FILE, dtype=dtype, mode=mode, shape=shape)

    def save_progress(rows: int) -> None:
        tmp = progress_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"fingerprint": fingerprint, "shape": list(shape), "dtype": dtype, "rows_done": rows})
        )
        tmp.replace(progress_path)  # atomic: a crash never leaves a progress file ahead of the data

    save_progress(done)
    bar = tqdm(total=n_docs, initial=done, desc="encode passages", unit="psg", dynamic_ncols=True)
    row, chunk = 0, []
    for doc in docs:
        if row < done:
            row += 1
            continue
        chunk.append(doc.contents)
        row += 1
        if len(chunk) == chunk_size or row == n_docs:
            start = row - len(chunk)
            vectors, reused = _encode_chunk(chunk, encoder, cache)
            emb[start:row] = vectors.astype(dtype)
            emb.flush()
            save_progress(row)
            bar.update(len(chunk))
            if cache is not None:
                bar.set_postfix(cached=reused, refresh=False)
            chunk = []
    bar.close()
    if row != n_docs:
        raise RuntimeError(f"corpus has {row} rows, expected {n_docs} (changed during the build?)")
    return emb


def build_faiss(emb: np.ndarray, factory: str, out_path: Path, *, train_size: int, chunk_size: int) -> None:
    """Build ``factory`` (inner product) over the rows of ``emb``, adding in chunks, and write it."""
    n, dim = emb.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
        log.info("training %s on %d vectors", factory, len(sample))
        index.train(np.ascontiguousarray(emb[sample], dtype=np.float32))
    for start in tqdm(
        range(0, n, chunk_size), desc=f"faiss add ({factory})", unit="chunk", dynamic_ncols=True
    ):
        index.add(np.ascontiguousarray(emb[start : start + chunk_size], dtype=np.float32))
    tmp = out_path.with_suffix(".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(out_path)


def read_faiss_index(path: Path) -> faiss.Index:
    """Open a FAISS index file memory-mapped and read-only, so its vectors stay in the page cache.

    ``IO_FLAG_MMAP_IFC``, not ``IO_FLAG_MMAP``: the latter maps only inverted lists, so a Flat index
    (the 61 GB wiki-18 e5 index) was read into anonymous memory whole, costing RSS the size of the
    file; the IFC flag maps the codes of Flat and HNSW indexes too (and IVF lists, like the old flag).
    The pages are shared between processes serving the same file, and a GPU copy or the torch engine
    reads through the mapping without a second copy in RAM.
    """
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def flat_vectors(index: faiss.Index) -> np.ndarray:
    """The raw vectors of a Flat index (e.g. the prebuilt wiki-18 e5 index) as an ``n × d`` view."""
    flat = faiss.downcast_index(index)
    if not isinstance(flat, faiss.IndexFlat):
        raise ValueError(
            f"exact torch search needs a Flat index or embeddings file, got {type(flat).__name__}"
        )
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


class FaissEngine:
    """FAISS search on CPU, or on the named GPUs (fp16, sharded) when faiss-gpu is installed."""

    def __init__(self, index: faiss.Index, *, gpu_devices: list[int], search_params: str = ""):
        if search_params:
            faiss.ParameterSpace().set_index_parameters(index, search_params)
        if gpu_devices:
            opts = faiss.GpuMultipleClonerOptions()
            opts.useFloat16 = True
            opts.shard = True
            resources = [faiss.StandardGpuResources() for _ in gpu_devices]
            index = faiss.index_cpu_to_gpu_multiple_py(resources, index, opts, gpu_devices)
            self._resources = resources  # keep alive as long as the index
        self.index = index
        self.where = f"faiss-gpu{gpu_devices}" if gpu_devices else "faiss-cpu"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return scores, rows


class TorchExactEngine:
    """Exact inner-product search with a matmul and top-k in PyTorch (fp16 on GPU, fp32 on CPU).

    The corpus matrix is uploaded in chunks; search streams over ``block_rows`` rows at a time and
    merges partial top-k, so a query batch never materialises a full ``batch × corpus`` score matrix.
    """

    def __init__(self, vectors: np.ndarray, device: str, block_rows: int = 1 << 20):
        self.device = torch.device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        n = vectors.shape[0]
        self.matrix = torch.empty((n, vectors.shape[1]), dtype=dtype, device=self.device)
        for s in range(0, n, 1 << 18):
            self.matrix[s : s + (1 << 18)] = torch.from_numpy(
                np.asarray(vectors[s : s + (1 << 18)], dtype=np.float32)
            )
        self.block_rows = block_rows
        self.where = f"torch-exact[{self.device}]"

    @property
    def ntotal(self) -> int:
        return int(self.matrix.shape[0])

    @torch.inference_mode()
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device, self.matrix.dtype)
        best_s = best_i = None
        for s in range(0, self.ntotal, self.block_rows):
            scores = (qt @ self.matrix[s : s + self.block_rows].T).float()
            top_s, top_i = scores.topk(min(k, scores.shape[1]), dim=1)
            top_i += s
            if best_s is None:
                best_s, best_i = top_s, top_i
            else:
                cat_s, cat_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i], 1)
                best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
                best_i = cat_i.gather(1, pos)
        scores, rows = best_s.cpu().numpy(), best_i.cpu().numpy().astype(np.int64)
        if rows.shape[1] < k:  # corpus smaller than k: pad like FAISS does
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, rows


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def open_engine(
    dense_dir: Path, *, engine: str, gpu_devices: list[int], search_params: str
) -> FaissEngine | TorchExactEngine:
    """Pick the search engine (see the module docstring); ``auto`` never uses a GPU nobody named."""
    if engine not in ("auto", "faiss", "torch"):
        raise ValueError(f"engine must be auto | faiss | torch, got {engine!r}")
    if engine == "auto":
        engine = "torch" if gpu_devices and not faiss_has_gpu() else "faiss"
    if engine == "faiss":
        if gpu_devices and not faiss_has_gpu():
            raise RuntimeError(
                "gpu_devices set with engine=faiss but faiss-gpu is not installed; use engine=torch"
            )
        return FaissEngine(
            read_faiss_index(dense_dir / INDEX_FILE),
            gpu_devices=gpu_devices,
            search_params=search_params,
        )
    device = f"cuda:{gpu_devices[0]}" if gpu_devices else "cpu"
    meta_path = dense_dir / PROGRESS_FILE
    if (dense_dir / EMB_FILE).exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        vectors = np.memmap(dense_dir / EMB_FILE, dtype=meta["dtype"], mode="r", shape=tuple(meta["shape"]))
        return TorchExactEngine(vectors, device)
    index = read_faiss_index(dense_dir / INDEX_FILE)  # e.g. the downloaded wiki-18 Flat index
    return TorchExactEngine(flat_vectors(index), device)  # copies while ``index`` is still alive
