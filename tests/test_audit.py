"""Corpus coverage audit (``python -m search_r1.eval audit``) on real indexes: a hand-built corpus whose
answers are known, the embedded world through the CLI, and the NQ / wiki-18 formats of the rehearsal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_retrieval_helpers import build_world_index, tiny_encoder_config

from search_r1.data.corpus import Doc, make_contents, write_corpus
from search_r1.data.schema import QAExample, write_parquet
from search_r1.eval.__main__ import main as eval_main
from search_r1.eval.audit import AuditConfig, GoldMatcher, audit
from search_r1.paths import REPO_ROOT
from search_r1.retrieval.build import build_index
from search_r1.retrieval.config import BuildConfig, EncoderConfig, ServerConfig
from search_r1.rewards.metrics import cover_exact_match, normalize_answer

DOCS = [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Anna Karenina", "Anna Karenina is a novel by the Russian author Leo Tolstoy."),
    ("Statue of Liberty", "The Statue of Liberty stands on an island in New York Harbor, U.S.A."),
    ("Mount Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("Violin", "The violin is a wooden string instrument with four strings."),
    ("Glacier", "A glacier is a persistent body of dense ice that moves under its own weight."),
]
# (source, question, golds, in corpus, bm25 top-1, dense top-1, bm25 top-6, dense top-6)
QUESTIONS = [
    ("alpha", "What is the capital of France?", ["Paris"], True, True, True, True, True),
    ("alpha", "Who wrote Anna Karenina?", ["Ann"], False, False, False, False, False),  # not in "Anna"
    ("alpha", "Where does the Statue of Liberty stand?", ["THE U.S.A.!"], True, True, True, True, True),
    ("alpha", "Which city hosts the Olympics in 2050?", ["Berlin"], False, False, False, False, False),
    # The answer is only in the Tolstoy passage, which shares no word with the question: BM25 drops
    # it, dense ranks it somewhere in the six.
    ("beta", "What is glacier ice made of?", ["Leo Tolstoy"], True, False, False, False, True),
    ("beta", "Which instrument is wooden?", ["fiddle", "violin"], True, True, True, True, True),
]


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit")
    corpus = root / "corpus.jsonl"
    write_corpus([Doc(f"d{i}", make_contents(t, x)) for i, (t, x) in enumerate(DOCS)], corpus)
    enc = EncoderConfig(device="cpu")  # the real MiniLM, offline
    index = build_index(BuildConfig(corpus=str(corpus), out_dir=str(root / "index"), encoder=enc))
    examples = [
        QAExample(str(i), q, golds, source, "test") for i, (source, q, golds, *_) in enumerate(QUESTIONS)
    ]
    return write_parquet(examples, root / "test.parquet"), index


def test_matcher_is_cover_em_whole_words_after_em_normalisation():
    golds = ["Ann", "an", "THE U.S.A.!", "Leo Tolstoy", "New York Harbor", "4"]
    texts = [
        "Anna Karenina, a novel",
        "Queen Ann, of Britain",
        "an apple and a pear",
        "made in the u.s.a",
        "usable",
        "by LEO  tolstoy.",
        "Leo, the Tolstoy",
        "Leon Tolstoy",
        '"New York" Harbor!',
        "York Harbor of New",
        "44 strings",
        "four (4) strings",
    ]
    matcher = GoldMatcher(normalize_answer(g) for g in golds)
    assert "" not in matcher.golds  # "an" is an article: it normalises to nothing and never occurs
    for text in texts:
        assert matcher.find(text) == {normalize_answer(g) for g in golds if cover_exact_match(text, g)}, text
    assert matcher.find("Anna Karenina, a novel") == set()
    assert matcher.find("Queen Ann, of Britain") == {"ann"}
    assert matcher.find("made in the u.s.a") == {"usa"}
    assert matcher.find('"New York" Harbor!') == {"new york harbor"}
    assert matcher.find("York Harbor of New") == set()


def test_hand_built_corpus_gives_the_exact_shares(hand_built, tmp_path):
    data, index = hand_built
    out = audit(AuditConfig(data=[str(data)], index_dir=str(index), topk=[1, 6], out_dir=str(tmp_path)))
    got = json.loads((out / "audit.json").read_text())["by_source"]
    for source, idx in {"alpha": range(4), "beta": range(4, 6), "overall": range(6)}.items():
        rows = [QUESTIONS[i] for i in idx]
        cols = list(zip(*(r[3:] for r in rows), strict=True))
        expected = {
            "n": len(rows),
            "in_corpus": _share(cols[0]),
            "in_topk": {
                "bm25": {"1": _share(cols[1]), "6": _share(cols[3])},
                "dense": {"1": _share(cols[2]), "6": _share(cols[4])},
            },
        }
        assert got[source] == expected, source
    assert got["overall"]["in_corpus"] == 4 / 6 and got["beta"]["in_topk"]["bm25"]["6"] == 0.5
    per_q = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert [q["in_corpus"] for q in per_q] == [q[3] for q in QUESTIONS]
    assert per_q[0]["first_hit_rank"] == {"bm25": 1, "dense": 1}
    assert per_q[4]["first_hit_rank"]["bm25"] is None and per_q[4]["first_hit_rank"]["dense"] > 1
    assert "| alpha | 4 | 0.5000 |" in (out / "audit.md").read_text()


def test_corpus_scan_is_the_same_in_worker_processes_and_small_chunks(hand_built, tmp_path):
    data, index = hand_built
    cfg = AuditConfig(
        data=[str(data)], index_dir=str(index), backends=[], workers=2, chunk_size=2, out_dir=str(tmp_path)
    )
    got = json.loads((audit(cfg) / "audit.json").read_text())
    assert got["by_source"]["overall"] == {"n": 6, "in_corpus": 4 / 6, "in_topk": {}}


def test_a_running_server_is_audited_like_the_same_backend_in_process(hand_built, tmp_path):
    from search_r1.retrieval.local import serve_in_thread
    from search_r1.retrieval.searchers import load_retriever

    data, index = hand_built
    cfg = ServerConfig(index_dir=str(index), backend="bm25", port=0)
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        out = audit(
            AuditConfig(
                data=[str(data)], index_dir=str(index), retriever_url=url, topk=[1, 6], out_dir=str(tmp_path)
            )
        )
    in_topk = json.loads((out / "audit.json").read_text())["by_source"]["overall"]["in_topk"]
    assert list(in_topk) == ["bm25", "dense", "server-bm25"]
    assert in_topk["server-bm25"] == in_topk["bm25"] == {"1": 0.5, "6": 0.5}


@pytest.fixture(scope="module")
def world_index(world) -> Path:
    return build_world_index(world.corpus)  # tiny encoder + bm25s, cached under outputs/


def test_world_end_to_end_through_the_cli(world, world_index, tmp_path, capsys):
    out = tmp_path / "world"
    eval_main(
        ["audit", f"data=[{world.root / 'test.parquet'}]", f"index_dir={world_index}", f"out_dir={out}"]
    )
    printed = capsys.readouterr().out
    assert "| source | n | in corpus | bm25@1 | bm25@3 | bm25@10 | dense@1 | dense@3 | dense@10 |" in printed
    assert f"[audit] -> {out}" in printed
    result = json.loads((out / "audit.json").read_text())
    overall = result["by_source"]["overall"]
    assert overall["n"] == 225 and overall["in_corpus"] == 1.0  # the world states every answer somewhere
    for per_k in overall["in_topk"].values():
        shares = [per_k[k] for k in ("1", "3", "10")]
        assert 0 < shares[0] <= shares[1] <= shares[2] <= overall["in_corpus"]
    per_q = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len(per_q) == 225 and all(q["in_corpus"] for q in per_q)
    bm25_ranks = [q["first_hit_rank"]["bm25"] for q in per_q]
    assert overall["in_topk"]["bm25"]["3"] == sum(r is not None and r <= 3 for r in bm25_ranks) / 225


def test_nq_questions_on_a_wiki18_format_index(world, world_index, tmp_path):
    """The rehearsal's formats: FlashRAG JSONL through prepare_data, the corpus and Flat index through
    the wiki-18 import. Same questions, same vectors: the shares equal the world's own."""
    from search_r1.data.builders import PrepareConfig, build
    from search_r1.retrieval.download import DownloadConfig, download_wiki18
    from search_r1.world.mirror import write_questions, write_wiki18

    write_questions(world.root, tmp_path / "mirror", "nq", ["test"])
    qa = tmp_path / "qa"
    build(PrepareConfig(sources=["nq"], train_sources=[], raw_dir=str(tmp_path / "mirror" / "flashrag"),
                        out_dir=str(qa), download=False), log=lambda _: None)  # fmt: skip
    write_wiki18(world.corpus, world_index / "dense" / "index.faiss", tmp_path / "hub")
    encoder = tiny_encoder_config(world_index.parent / "encoder")
    wiki18 = download_wiki18(DownloadConfig(raw_dir=str(tmp_path / "raw"), index_dir=str(tmp_path / "wiki18"),
                                            mirror=str(tmp_path / "hub"), encoder=encoder))  # fmt: skip
    data = [str(qa / "nq" / "test.parquet"), str(world.root / "test.parquet")]
    out = audit(AuditConfig(data=data, index_dir=str(wiki18), out_dir=str(tmp_path / "a")))
    by_source = json.loads((out / "audit.json").read_text())["by_source"]
    assert list(by_source["nq"]["in_topk"]) == ["dense"]  # the import has no BM25 part
    assert by_source["nq"] == by_source["world"] and by_source["nq"]["n"] == 225
    assert by_source["nq"]["in_corpus"] == 1.0
    own = audit(
        AuditConfig(
            data=data[1:], index_dir=str(world_index), backends=["dense"], out_dir=str(tmp_path / "b")
        )
    )
    assert json.loads((own / "audit.json").read_text())["by_source"]["world"] == by_source["world"]


def test_missing_dataset_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "search_r1.eval", "audit", f"data=[{tmp_path / 'nope.parquet'}]"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: dataset file not found: {tmp_path / 'nope.parquet'}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("index_dir={tmp}/none", "no finished index in {tmp}/none"),
        ("backends=[sparse]", "unknown backend 'sparse'"),
        ("topk=[0]", "topk must be a non-empty list of k >= 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(hand_built, tmp_path, capsys, override, message):
    data, index = hand_built
    args = [f"data=[{data}]", f"index_dir={index}", override.format(tmp=tmp_path), f"out_dir={tmp_path}/o"]
    with pytest.raises(SystemExit) as exc:
        eval_main(["audit", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path)) and err.count("\n") == 1
