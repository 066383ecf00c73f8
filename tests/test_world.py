"""The embedded world: deterministic, schema-valid, and every answer derivable from the corpus."""

from __future__ import annotations

import json
import re
from collections import Counter

import pandas as pd
import pytest
from omegaconf.errors import ConfigKeyError, ValidationError

from search_r1.config import load_config
from search_r1.data.corpus import iter_corpus
from search_r1.data.schema import REQUIRED_COLUMNS, read_parquet, uid_of
from search_r1.paths import CONFIG_DIR
from search_r1.world.build import SPLITS, WorldConfig, build_world, load_questions


def test_rebuild_is_bit_for_bit(world, tmp_path):
    cfg = load_config(WorldConfig, CONFIG_DIR / "world" / "default.yaml", [f"out_dir={tmp_path}"])
    again = build_world(cfg, verbose=False)
    assert json.loads(again.manifest.read_text()) == json.loads(world.manifest.read_text())
    for name in json.loads(world.manifest.read_text())["files"]:
        assert (again.root / name).read_bytes() == (world.root / name).read_bytes(), name


def test_another_seed_gives_another_world(world, tmp_path):
    cfg = load_config(WorldConfig, CONFIG_DIR / "world" / "default.yaml", [f"out_dir={tmp_path}", "seed=1"])
    other = build_world(cfg, verbose=False)
    assert other.corpus.read_bytes() != world.corpus.read_bytes()


# A corpus line, literally: two keys in this order, JSON's default separators, UTF-8 unescaped; the
# id says which part of the world the passage is from; contents is a quoted title line, then one line.
CORPUS_LINE = re.compile(r'\{"id": "(?P<id>[^"]+)", "contents": "(?P<contents>.*)"\}')
CORPUS_ID = re.compile(r"wiki-\d+|kb-(person|city|country|company)-[a-z]+(-[a-z]+)*")
CONTENTS = re.compile(r'"(?P<title>[^"\n]+)"\n(?P<text>[^\n]+)')


def test_corpus_schema(world):
    lines = world.corpus.read_text(encoding="utf-8").splitlines()
    docs = list(iter_corpus(world.corpus))
    assert len(docs) == len(lines) == len({d.id for d in docs})
    for line, doc in zip(lines, docs, strict=True):
        m = CORPUS_LINE.fullmatch(line)
        assert m and m["id"] == doc.id and CORPUS_ID.fullmatch(doc.id), line[:120]
        assert json.loads(f'"{m["contents"]}"') == doc.contents  # the raw field is the Doc's contents
        c = CONTENTS.fullmatch(doc.contents)
        assert c and (c["title"], c["text"]) == (doc.title, doc.text), line[:120]
    kinds = Counter(d.id.split("-")[0] if d.id.startswith("wiki") else d.id.split("-")[1] for d in docs)
    assert set(kinds) == {"wiki", "person", "city", "country", "company"}
    assert any(not line.isascii() for line in lines)  # real Wikipedia text: written unescaped


def test_parquet_schema_and_unique_group_ids(world):
    uids = []
    for split in SPLITS:
        df = pd.read_parquet(getattr(world, split))
        assert set(REQUIRED_COLUMNS) <= set(df.columns)
        rows = read_parquet(getattr(world, split))
        assert rows, split
        for row in rows:
            assert row["data_source"] == "world"
            assert row["prompt"][0]["role"] == "user"
            assert row["extra_info"]["question"] in row["prompt"][0]["content"]
            assert row["extra_info"]["split"] == split
            assert row["reward_model"] == {
                "style": "rule",
                "ground_truth": {"target": row["reward_model"]["ground_truth"]["target"]},
            }
            uids.append(uid_of(row))
    assert len(set(uids)) == len(uids)


def test_splits_do_not_share_subjects(world):
    questions = load_questions(world)
    split_of: dict[str, set[str]] = {}
    for q in questions:
        split_of.setdefault(q["subject"], set()).add(q["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {q["split"] for q in questions} == set(SPLITS)
    assert any(q["hops"] == 2 for q in questions if q["split"] == "test")
    assert 0 < sum(q["known"] for q in questions) < len(questions)


def test_every_test_answer_is_derivable_from_the_corpus(world):
    docs = {d.id: d for d in iter_corpus(world.corpus)}
    for q in (q for q in load_questions(world) if q["split"] == "test"):
        support = [docs[i] for i in q["support"]]  # KeyError = a support passage missing from the corpus
        assert len(support) == q["hops"] == len(set(q["support"]))
        assert q["answer"] in support[-1].text, q
        if q["hops"] == 2:
            bridge = support[1].title
            assert bridge in support[0].text, q  # hop 1 names the bridge entity ...
            assert q["answer"] not in support[0].text, q  # ... but not the answer: two passages needed


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("split_fractions=[0.5]", ValueError, "split_fractions must be three shares summing to 1, got [0.5]"),
        ("split_fractions=[0.5,0.3,0.3]", ValueError, "split_fractions must be three shares summing to 1"),
        ("known_fraction=1.5", ValueError, "known_fraction must be in [0, 1], got 1.5"),
        (
            "n_people=notanint",
            ValidationError,
            "Value 'notanint' of type 'str' could not be converted to Integer",
        ),
        ("no_such_key=1", ConfigKeyError, "Key 'no_such_key' not in 'WorldConfig'"),
    ],
)
def test_bad_config_is_rejected(bad: str, error: type[Exception], message: str, tmp_path) -> None:
    with pytest.raises(error, match=re.escape(message)):
        load_config(WorldConfig, CONFIG_DIR / "world" / "default.yaml", [f"out_dir={tmp_path}", bad])
