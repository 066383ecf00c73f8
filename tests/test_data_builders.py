"""FlashRAG JSONL → verl parquet on committed fixtures; the download's offline error."""

from __future__ import annotations

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
