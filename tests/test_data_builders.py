"""FlashRAG JSONL → verl parquet on committed fixtures; the download's offline error."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from search_r1.agent.prompt import render_prompt
from search_r1.data.builders import DataDownloadError, PrepareConfig, build, download, read_flashrag_jsonl
from search_r1.data.schema import read_parquet, uid_of
from search_r1.paths import FIXTURE_DIR, REPO_ROOT

RAW = FIXTURE_DIR / "fixtures" / "flashrag"


def test_build_from_fixtures(tmp_path) -> None:
    cfg = PrepareConfig(
        sources=["nq", "hotpotqa", "bamboogle"], raw_dir=str(RAW), out_dir=str(tmp_path), download=False
    )
    written = build(cfg, log=lambda _: None)
    assert set(written) == {
        "nq/train",
        "nq/test",
        "hotpotqa/train",
        "hotpotqa/dev",
        "bamboogle/test",
        "train",
        "test",
    }

    nq_train = read_parquet(tmp_path / "nq" / "train.parquet")
    assert len(nq_train) == 3  # the row without a gold answer is skipped (and reported)
    row = nq_train[1]
    assert row["data_source"] == "nq" and row["extra_info"]["split"] == "train"
    assert row["prompt"] == render_prompt("big little lies season 2 how many episodes", "search_r1")
    assert row["reward_model"] == {"style": "rule", "ground_truth": {"target": ["seven"]}}
    assert row["extra_info"]["id"] == "train_1"

    train = read_parquet(tmp_path / "train.parquet")
    test = read_parquet(tmp_path / "test.parquet")
    assert len(train) == 3 + 2 and len(test) == 3 + 2 + 2
    assert {r["data_source"] for r in test} == {"nq", "hotpotqa", "bamboogle"}
    for merged in (train, test):  # group ids stay unique when sources are merged (both have index 0..)
        uids = [uid_of(r) for r in merged]
        assert len(set(uids)) == len(uids)
    assert uid_of(test[0]) == "nq-test-0" and uid_of(test[-1]) == "bamboogle-test-1"
    hotpot_dev = read_parquet(tmp_path / "hotpotqa" / "dev.parquet")
    assert hotpot_dev[0]["extra_info"]["split"] == "dev"  # no test answers for multi-hop sets
    assert read_parquet(tmp_path / "nq" / "test.parquet")[2]["reward_model"]["ground_truth"]["target"] == [
        "Olivia",
        "AM",
    ]


def test_unicode_and_limit() -> None:
    examples, skipped = read_flashrag_jsonl(RAW / "nq" / "test.jsonl", "nq", "test", limit=1)
    assert len(examples) == 1 and skipped == 0 and examples[0].golden_answers == ["Wilhelm Conrad Röntgen"]


def test_bad_row_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"question": "q", "golden_answers": ["a"]}\n{"question": "no answers key"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        read_flashrag_jsonl(bad, "nq", "test")


def test_missing_file_without_download_is_an_error(tmp_path) -> None:
    cfg = PrepareConfig(sources=["popqa"], raw_dir=str(tmp_path), out_dir=str(tmp_path / "o"), download=False)
    with pytest.raises(DataDownloadError, match="popqa/test.jsonl"):
        build(cfg, log=lambda _: None)


def test_offline_download_error_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataDownloadError, match=r"Offline\? Copy the file to .*nq/test.jsonl"):
        download("nq", "test", tmp_path)


def test_prepare_data_script(tmp_path) -> None:
    args = ["sources=[bamboogle]", f"raw_dir={RAW}", f"out_dir={tmp_path}", "download=false"]
    proc = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_parquet(tmp_path / "test.parquet")) == 2
    proc = subprocess.run(
        [sys.executable, "scripts/prepare_data.py", "sources=[nope]"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "unknown datasets ['nope']" in proc.stderr  # bad input


# ---- corrupt inputs name their file and row ------------------------------------------------------


GOOD_CORPUS_LINE = '{"id": "d1", "contents": "\\"T\\"\\ntext"}\n'


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "d2", "contents": "\\"T\\"\\ntr\n', "invalid JSON"),  # torn mid-string
        ('["d2", "text"]\n', "expected a JSON object, got list"),
        ('{"contents": "\\"T\\"\\ntext"}\n', "needs an 'id'"),
        ('{"id": null, "contents": "x"}\n', "needs an 'id'"),
        ('{"id": "d2", "body": "x"}\n', "needs a string 'contents', or 'title' and 'text'"),
    ],
)
def test_a_corrupt_corpus_line_names_file_and_line(tmp_path, bad_line: str, message: str) -> None:
    """Line 3 (after a good line and a blank one) is bad: the reader and the index build that streams
    it both stop with a CorpusError naming ``<file>:3``."""
    from search_r1.data.corpus import CorpusError, iter_corpus
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig

    path = tmp_path / "corpus.jsonl"
    path.write_text(GOOD_CORPUS_LINE + "\n" + bad_line + GOOD_CORPUS_LINE)
    where = re.escape(f"{path}:3: ")
    with pytest.raises(CorpusError, match=where + re.escape(message)):
        list(iter_corpus(path))
    with pytest.raises(CorpusError, match=where):
        build_index(BuildConfig(corpus=str(path), out_dir=str(tmp_path / "index"), backends=["bm25"]))


def _corrupt(row: dict, what: str) -> None:
    if what == "no_golds":
        row["reward_model"]["ground_truth"]["target"] = []
    elif what == "null_gold":
        row["reward_model"]["ground_truth"]["target"] = ["Paris", None]
    elif what == "no_target":
        row["reward_model"]["ground_truth"] = {"style": "rule"}
    elif what == "empty_prompt":
        row["prompt"] = []
    elif what == "no_question":
        row["extra_info"] = {"split": "test", "index": 1}


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("no_golds", "empty gold answer list"),
        ("null_gold", "a gold answer is missing or empty"),
        ("no_target", "missing reward_model.ground_truth.target"),
        ("empty_prompt", "'prompt' must be a non-empty list of chat messages"),
        ("no_question", "extra_info must hold 'question'"),
    ],
)
def test_a_corrupt_parquet_row_names_file_and_row(tmp_path, what: str, message: str) -> None:
    """Row 1 of 3 is broken after writing: reading it, directly or as the SFT teacher's questions,
    raises DatasetError naming ``<file>: row 1``."""
    import pandas as pd

    from search_r1.data.schema import DatasetError, QAExample, to_verl_row
    from sft.generate import load_questions

    rows = [to_verl_row(QAExample(f"q{i}", f"question {i}?", ["Paris"], "nq", "test"), i) for i in range(3)]
    _corrupt(rows[1], what)
    path = tmp_path / "test.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    where = re.escape(f"{path}: row 1: ")
    with pytest.raises(DatasetError, match=where + re.escape(message)):
        read_parquet(path)
    with pytest.raises(DatasetError, match=where):
        load_questions(path)


def test_a_file_that_is_no_parquet_names_the_file(tmp_path) -> None:
    from search_r1.data.schema import DatasetError

    path = tmp_path / "train.parquet"
    path.write_text('{"question": "a JSONL file under the wrong name"}\n')
    with pytest.raises(DatasetError, match=re.escape(f"{path}: ")):
        read_parquet(path)
