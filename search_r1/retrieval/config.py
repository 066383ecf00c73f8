"""Typed configs for index building and serving (YAML in ``configs/retriever/`` + CLI overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from search_r1.paths import INDEX_DIR, WORLD_DIR

# ``model`` aliases resolved to a local folder, so offline machines need no hub access.
MINILM = "minilm"


@dataclass
class EncoderConfig:
    model: str = field(
        default=MINILM,
        metadata={"help": "HF model id or local folder; 'minilm' = the offline all-MiniLM-L6-v2 package"},
    )
    pooling: str = field(default="mean", metadata={"help": "mean | cls"})
    normalize: bool = field(
        default=True, metadata={"help": "L2-normalise embeddings (inner product = cosine)"}
    )
    query_prefix: str = field(default="", metadata={"help": "prepended to queries, e.g. 'query: ' for e5"})
    passage_prefix: str = field(
        default="", metadata={"help": "prepended to passages, e.g. 'passage: ' for e5"}
    )
    max_length: int = field(default=256, metadata={"help": "token limit for passages and queries"})
    batch_size: int = field(default=64, metadata={"help": "encoder batch size"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    fp16: bool = field(default=True, metadata={"help": "half precision on GPU (ignored on CPU)"})


@dataclass
class BuildConfig:
    corpus: str = field(
        default=str(WORLD_DIR / "corpus.jsonl"), metadata={"help": "corpus JSONL (DESIGN §3)"}
    )
    out_dir: str = field(default=str(INDEX_DIR / "world"), metadata={"help": "index folder to create/resume"})
    backends: list[str] = field(
        default_factory=lambda: ["dense", "bm25"],
        metadata={"help": "any of dense, bm25, pyserini (Lucene BM25; needs requirements/pyserini.txt)"},
    )
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    faiss_factory: str = field(
        default="Flat", metadata={"help": "FAISS factory string: Flat, HNSW32, IVF4096,PQ64, ..."}
    )
    train_size: int = field(default=262144, metadata={"help": "max vectors sampled to train IVF/PQ indexes"})
    chunk_size: int = field(
        default=8192, metadata={"help": "passages per embedding chunk (flushed to the memmap; resume unit)"}
    )
    embedding_dtype: str = field(default="float16", metadata={"help": "float16 | float32 on-disk embeddings"})
    embedding_cache: str = field(
        default="",
        metadata={
            "help": "folder of passage vectors reused across builds with the same encoder (relative: "
            "under $SEARCH_R1_HOME); '' = off, as large corpora want"
        },
    )
    bm25_stopwords: str = field(default="en", metadata={"help": "bm25s stopword list ('en' or 'none')"})
    lucene_threads: int = field(
        default=0, metadata={"help": "pyserini: Lucene indexing threads; 0 = all cores"}
    )
    force: bool = field(default=False, metadata={"help": "rebuild even if a finished index exists"})
    torch_threads: int = field(
        default=0,
        metadata={"help": "CPU threads for the encoder; 0 = torch's default (use 1 on a busy shared node)"},
    )


@dataclass
class BatchingConfig:
    enabled: bool = field(default=True, metadata={"help": "coalesce concurrent requests into one search"})
    max_batch: int = field(default=256, metadata={"help": "max queries per coalesced search"})
    max_wait_ms: float = field(
        default=2.0, metadata={"help": "how long the first request of a batch waits for company"}
    )


@dataclass
class RerankerConfig:
    model: str | None = field(default=None, metadata={"help": "cross-encoder (HF id or folder); null = off"})
    candidates: int = field(default=20, metadata={"help": "k' first-stage candidates reranked down to topk"})
    max_length: int = field(default=256, metadata={"help": "token limit per (query, passage) pair"})
    batch_size: int = field(default=64, metadata={"help": "pairs per cross-encoder forward"})
    device: str = field(
        default="auto", metadata={"help": "auto (= first of gpu_devices, else cpu) | cpu | cuda:N"}
    )


@dataclass
class ServerConfig:
    index_dir: str = field(default=str(INDEX_DIR / "world"), metadata={"help": "index folder (build_index)"})
    backend: str = field(default="dense", metadata={"help": "dense | bm25 | hybrid | pyserini"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (loopback by default)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    token: str | None = field(
        default=None,
        metadata={
            "help": "bearer token required on /retrieve (else env SEARCH_R1_RETRIEVER_TOKEN; null = open)"
        },
    )
    topk: int = field(default=3, metadata={"help": "default topk when a request sends none"})
    max_topk: int = field(default=100, metadata={"help": "largest topk a request may ask for"})
    max_queries: int = field(default=4096, metadata={"help": "most queries in one request"})
    max_query_chars: int = field(default=4096, metadata={"help": "longest query string (characters)"})
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata={"help": "largest request body"})
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    cache_size: int = field(
        default=65536,
        metadata={
            "help": "LRU cache of (query, topk) -> passages in entries (a GRPO step repeats each query n "
            "times); 0 = off"
        },
    )
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    rrf_k: int = field(default=60, metadata={"help": "hybrid: reciprocal-rank-fusion constant"})
    hybrid_candidates: int = field(
        default=50, metadata={"help": "hybrid: candidates taken from each backend"}
    )
    engine: str = field(
        default="auto",
        metadata={"help": "dense search engine: auto | faiss | torch (exact search in PyTorch)"},
    )
    gpu_devices: list[int] = field(
        default_factory=list,
        metadata={
            "help": "GPUs for dense search (FAISS-GPU fp16, else torch); [] = CPU. Never all by default"
        },
    )
    search_params: str = field(default="", metadata={"help": "FAISS ParameterSpace string, e.g. nprobe=64"})
    encoder_device: str = field(
        default="auto",
        metadata={"help": "query encoder: auto (= first of gpu_devices, else cpu) | cpu | cuda:N"},
    )
    pyserini_index: str | None = field(
        default=None,
        metadata={
            "help": "pyserini backend: Lucene index folder (e.g. the prebuilt wiki-18 BM25 one) or pyserini "
            "prebuilt name; null = <index_dir>/lucene from build_index backends=[pyserini]"
        },
    )
    pyserini_threads: int = field(
        default=0, metadata={"help": "pyserini backend: Lucene search threads per batch; 0 = all cores"}
    )
    torch_threads: int = field(
        default=1,
        metadata={
            "help": "CPU threads for torch (query encoder/reranker); 0 = torch's default. The server usually "
            "shares its node with a trainer: oversubscribed threads made one MiniLM query 14x slower here"
        },
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level"})
