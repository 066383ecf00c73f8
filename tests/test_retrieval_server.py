"""The real retrieval server on a free loopback port over a real index of the embedded world.

FAISS and bm25s indexes are built from ``world.corpus``; the dense encoder is a tiny random-weight
BERT with the MiniLM tokenizer (seconds to build and encode), so dense *rankings* are checked against
brute-force numpy over the stored embeddings rather than against relevance. BM25 relevance is
checked against the world's gold passages.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_retrieval_helpers import (
    build_world_index,
    make_tiny_cross_encoder,
    read_jsonl,
    tiny_encoder_config,
)

from search_r1.data.corpus import iter_corpus
from search_r1.retrieval.build import read_manifest
from search_r1.retrieval.client import AsyncRetrieverClient, RetrieverBadRequest, RetrieverClient
from search_r1.retrieval.config import BatchingConfig, RerankerConfig, ServerConfig
from search_r1.retrieval.encoder import Encoder
from search_r1.retrieval.local import serve_in_thread
from search_r1.retrieval.searchers import load_retriever

QUERIES = ["What is the capital of Thilfend?", "Abraham Lincoln emancipation", "river flowing through a city"]


@pytest.fixture(scope="module")
def world_index(world) -> Path:
    return build_world_index(world.corpus)


@pytest.fixture(scope="module")
def corpus(world) -> list:
    return list(iter_corpus(world.corpus))


def server_config(index: Path, **kw) -> ServerConfig:
    return ServerConfig(index_dir=str(index), port=0, encoder_device="cpu", **kw)


@pytest.fixture(scope="module")
def dense_url(world_index):
    cfg = server_config(
        world_index,
        backend="dense",
        max_topk=50,
        max_queries=64,
        max_query_chars=500,
        max_body_bytes=64 * 1024,
    )
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def bm25_url(world_index):
    cfg = server_config(world_index, backend="bm25")
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        yield url


# One pooled client for the raw-HTTP checks (creating an httpx client per call costs up to seconds
# of CA-bundle loading on a busy machine).
HTTP = httpx.Client(timeout=60, verify=False)


def post(url: str, body, **kw) -> httpx.Response:
    return HTTP.post(f"{url}/retrieve", json=body, **kw)


def brute_force(world_index: Path, queries: list[str]) -> np.ndarray:
    """Cosine scores of every corpus row, computed independently of FAISS."""
    m = read_manifest(world_index)
    meta = json.loads((world_index / "dense" / "progress.json").read_text())
    emb = np.fromfile(world_index / "dense" / "embeddings.bin", dtype=meta["dtype"]).reshape(meta["shape"])
    enc_cfg = tiny_encoder_config(Path(m["dense"]["settings"]["encoder"]["model"]))
    q = Encoder(enc_cfg).encode(queries, is_query=True)
    return q @ emb.astype(np.float32).T


# --- schema -------------------------------------------------------------------------------------------


def test_schema_byte_for_byte(dense_url, corpus):
    scored = post(dense_url, {"queries": QUERIES, "topk": 4, "return_scores": True})
    bare = post(dense_url, {"queries": QUERIES, "topk": 4, "return_scores": False})
    default = post(dense_url, {"queries": QUERIES, "topk": 4})
    by_id = {d.id: d.contents for d in corpus}
    for r in (scored, bare, default):
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
    body = scored.json()
    assert list(body) == ["result"] and len(body["result"]) == len(QUERIES)
    for per in body["result"]:
        assert len(per) == 4
        for item in per:
            assert list(item) == ["document", "score"]
            assert list(item["document"]) == ["id", "contents"]
            assert isinstance(item["score"], float)
            assert item["document"]["contents"] == by_id[item["document"]["id"]]

    # The bytes, written out: compact JSON, these keys in this order, UTF-8 unescaped, nothing else.
    # Only the ranking (ids, tested against brute force below) and the scores come from the response;
    # each passage's contents come from the corpus file.
    def doc(i: str) -> str:
        return '{"id":' + json.dumps(i) + ',"contents":' + json.dumps(by_id[i], ensure_ascii=False) + "}"

    ids = [[it["document"]["id"] for it in per] for per in body["result"]]
    scores = [[it["score"] for it in per] for per in body["result"]]
    with_scores = ",".join(
        "[" + ",".join(f'{{"document":{doc(i)},"score":{s!r}}}' for i, s in zip(q, sc, strict=True)) + "]"
        for q, sc in zip(ids, scores, strict=True)
    )
    assert scored.content.decode() == '{"result":[' + with_scores + "]}"
    # Without return_scores the items are the bare documents, in the same order.
    bare_docs = ",".join("[" + ",".join(doc(i) for i in q) + "]" for q in ids)
    assert bare.content.decode() == '{"result":[' + bare_docs + "]}"
    assert default.content == bare.content


def test_empty_queries_give_empty_result(dense_url):
    r = post(dense_url, {"queries": []})
    assert r.status_code == 200 and r.content == b'{"result":[]}'


def test_default_topk_and_max_topk(dense_url):
    assert [len(p) for p in post(dense_url, {"queries": QUERIES[:1]}).json()["result"]] == [3]
    assert len(post(dense_url, {"queries": QUERIES[:1], "topk": None}).json()["result"][0]) == 3
    assert len(post(dense_url, {"queries": QUERIES[:1], "topk": 50}).json()["result"][0]) == 50


# --- rankings -----------------------------------------------------------------------------------------


def test_dense_topk_order_and_scores_match_brute_force(dense_url, world_index, corpus):
    k = 10
    body = post(dense_url, {"queries": QUERIES, "topk": k, "return_scores": True}).json()
    exact = brute_force(world_index, QUERIES)
    row_of = {d.id: i for i, d in enumerate(corpus)}
    for qi, per in enumerate(body["result"]):
        got = np.array([it["score"] for it in per])
        assert np.all(np.diff(got) <= 1e-6), "scores must be non-increasing"
        np.testing.assert_allclose(got, np.sort(exact[qi])[::-1][:k], atol=2e-3)
        own = np.array([exact[qi, row_of[it["document"]["id"]]] for it in per])
        np.testing.assert_allclose(got, own, atol=2e-3)


def test_bm25_finds_gold_passages(bm25_url, world):
    questions = read_jsonl(world.questions)[:200]
    body = post(
        bm25_url, {"queries": [q["question"] for q in questions], "topk": 10, "return_scores": True}
    ).json()
    hits = 0
    for q, per in zip(questions, body["result"], strict=True):
        scores = [it["score"] for it in per]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
        hits += q["support"][0] in {it["document"]["id"] for it in per}
    assert hits / len(questions) >= 0.5, f"BM25 recall@10 only {hits}/{len(questions)}"


def test_bm25_query_without_known_terms_returns_no_noise(bm25_url):
    body = post(bm25_url, {"queries": ["qqqzzzx", "the of and"], "topk": 5}).json()
    assert body == {"result": [[], []]}


def test_hybrid_is_rrf_of_dense_and_bm25(world_index, dense_url, bm25_url, corpus):
    c, k, rrf_k = 30, 5, 60
    cfg = server_config(world_index, backend="hybrid", rrf_k=rrf_k, hybrid_candidates=c)
    row_of = {d.id: i for i, d in enumerate(corpus)}
    parts = [post(u, {"queries": QUERIES, "topk": c}).json()["result"] for u in (dense_url, bm25_url)]
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        body = post(url, {"queries": QUERIES, "topk": k, "return_scores": True}).json()
    for qi, per in enumerate(body["result"]):
        fused: dict[str, float] = {}
        for part in parts:
            for rank, doc in enumerate(part[qi], start=1):
                fused[doc["id"]] = fused.get(doc["id"], 0.0) + 1.0 / (rrf_k + rank)
        expected = sorted(fused.items(), key=lambda kv: (-kv[1], row_of[kv[0]]))[:k]
        assert [it["document"]["id"] for it in per] == [i for i, _ in expected]
        np.testing.assert_allclose([it["score"] for it in per], [s for _, s in expected], rtol=1e-5)


def test_reranker_reorders_first_stage_by_cross_encoder(world_index, dense_url, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ce = make_tiny_cross_encoder(tmp_path / "ce")
    cand, k = 12, 4
    cfg = server_config(
        world_index, backend="dense", reranker=RerankerConfig(model=str(ce), candidates=cand, device="cpu")
    )
    first = post(dense_url, {"queries": QUERIES, "topk": cand}).json()["result"]
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        body = post(url, {"queries": QUERIES, "topk": k, "return_scores": True}).json()
        assert HTTP.get(f"{url}/health").json()["reranker"] == str(ce)
    tok = AutoTokenizer.from_pretrained(ce)
    model = AutoModelForSequenceClassification.from_pretrained(ce).eval()
    for q, docs, per in zip(QUERIES, first, body["result"], strict=True):
        with torch.no_grad():
            batch = tok(
                [q] * len(docs),
                [d["contents"] for d in docs],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            s = model(**batch).logits[:, 0].numpy()
        order = np.argsort(-s, kind="stable")[:k]
        assert [it["document"]["id"] for it in per] == [docs[i]["id"] for i in order]
        np.testing.assert_allclose([it["score"] for it in per], s[order], atol=1e-4)


# --- bad input ----------------------------------------------------------------------------------------

BAD_JSON_BODIES = [
    ("invalid json", b'{"queries": ["a"', 400),
    ("non-utf8", b'{"queries": ["\xff\xfe"]}', 400),
    ("body is a list", b'["a", "b"]', 422),
    ("body is a string", b'"hello"', 422),
    ("missing queries", b'{"topk": 3}', 422),
    ("queries is a string", b'{"queries": "what is"}', 422),
    ("queries is null", b'{"queries": null}', 422),
    ("query not a string", b'{"queries": ["a", 1]}', 422),
    ("nested list", b'{"queries": [["a"]]}', 422),
    ("empty query", b'{"queries": [""]}', 422),
    ("blank query", b'{"queries": ["   "]}', 422),
    ("huge query", json.dumps({"queries": ["x" * 501]}).encode(), 413),
    ("topk zero", b'{"queries": ["a"], "topk": 0}', 422),
    ("topk negative", b'{"queries": ["a"], "topk": -3}', 422),
    ("topk above limit", b'{"queries": ["a"], "topk": 51}', 422),
    ("topk string", b'{"queries": ["a"], "topk": "3"}', 422),
    ("topk float", b'{"queries": ["a"], "topk": 2.5}', 422),
    ("topk bool", b'{"queries": ["a"], "topk": true}', 422),
    ("return_scores string", b'{"queries": ["a"], "return_scores": "yes"}', 422),
    ("too many queries", json.dumps({"queries": ["a"] * 65}).encode(), 413),
    ("oversized body", json.dumps({"queries": ["a"], "pad": "x" * 70000}).encode(), 413),
    ("empty body", b"", 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), BAD_JSON_BODIES, ids=[b[0] for b in BAD_JSON_BODIES])
def test_bad_bodies_get_4xx_json(dense_url, name, raw, status):
    r = HTTP.post(f"{dense_url}/retrieve", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"] and body["status"] == status


def test_oversized_chunked_body_without_content_length(dense_url):
    def chunks():
        yield b'{"queries": ["a"], "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    r = HTTP.post(f"{dense_url}/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type(dense_url, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = HTTP.post(f"{dense_url}/retrieve", content=b'{"queries": ["a"]}', headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/retrieve/extra", 404),
        ("GET", "/retrieve", 405),
        ("PUT", "/retrieve", 405),
        ("DELETE", "/health", 405),
        ("POST", "/health", 405),
    ],
)
def test_unknown_route_or_method(dense_url, method, path, status):
    r = HTTP.request(method, f"{dense_url}{path}")
    assert r.status_code == status and path in r.json()["error"]


def test_server_keeps_serving_after_bad_input(dense_url):
    for _, raw, _ in BAD_JSON_BODIES:
        HTTP.post(f"{dense_url}/retrieve", content=raw, headers={"content-type": "application/json"})
    assert HTTP.get(f"{dense_url}/health").json()["status"] == "ok"
    assert len(post(dense_url, {"queries": QUERIES, "topk": 2}).json()["result"]) == 3


def test_openapi_docs(dense_url):
    spec = HTTP.get(f"{dense_url}/openapi.json").json()
    assert {"/retrieve", "/health"} <= set(spec["paths"])
    schema = spec["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"queries", "topk", "return_scores"}
    assert HTTP.get(f"{dense_url}/docs").status_code == 200


# --- auth ---------------------------------------------------------------------------------------------


def test_bearer_token_auth(world_index):
    cfg = server_config(world_index, backend="bm25", token="s3cret")
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        denied = post(url, {"queries": ["a b"]})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert post(url, {"queries": ["a b"]}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(url, {"queries": ["a b"]}, headers={"Authorization": "Basic s3cret"}).status_code == 401
        ok = post(url, {"queries": ["Lincoln"]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["result"][0]
        assert HTTP.get(f"{url}/health").json()["auth"] is True
        with RetrieverClient(url, token="s3cret") as client:
            assert client.retrieve(["Lincoln"])[0]
        with RetrieverClient(url, max_retries=0) as client, pytest.raises(RetrieverBadRequest) as err:
            client.retrieve(["Lincoln"])
        assert err.value.status == 401


# --- client against the real server, batching and load ------------------------------------------------


def test_client_matches_raw_api(dense_url):
    raw = post(dense_url, {"queries": QUERIES, "topk": 3, "return_scores": True}).json()["result"]
    with RetrieverClient(dense_url, topk=3) as client:
        got = client.retrieve(QUERIES)
        assert client.health()["n_docs"] > 0
        with pytest.raises(RetrieverBadRequest):
            client.retrieve(["x"], topk=10_000)
    assert [[(p.id, p.contents, p.score) for p in per] for per in got] == [
        [(it["document"]["id"], it["document"]["contents"], it["score"]) for it in per] for per in raw
    ]
    assert got[0][0].title and got[0][0].text


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "unbatched"])
def test_load_64_concurrent_clients(world_index, world, batching):
    """64 clients × 5 requests each, mixed sizes and topk: zero errors and the right answer for each."""
    questions = [q["question"] for q in read_jsonl(world.questions)[:64]]
    cfg = server_config(
        world_index, backend="dense", batching=BatchingConfig(enabled=batching, max_batch=128)
    )
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        reference = {
            q: [d["id"] for d in per]
            for q, per in zip(
                questions, post(url, {"queries": questions, "topk": 5}).json()["result"], strict=True
            )
        }

        async def one_client(i: int) -> int:
            async with AsyncRetrieverClient(url, timeout=60, max_retries=0) as client:
                checked = 0
                for j in range(5):
                    qs = [questions[(i + j + m) % 64] for m in range(1 + (i + j) % 3)]
                    k = 1 + (i * 7 + j) % 5
                    res = await client.retrieve(qs, topk=k)
                    for q, per in zip(qs, res, strict=True):
                        assert [p.id for p in per] == reference[q][:k]
                        checked += 1
                return checked

        async def run() -> list[int]:
            return await asyncio.gather(*(one_client(i) for i in range(64)))

        checked = asyncio.run(run())
        health = HTTP.get(f"{url}/health").json()
    assert len(checked) == 64 and sum(checked) > 300
    if batching:  # requests really were coalesced
        assert health["batching"]["batches"] < 64 * 5
