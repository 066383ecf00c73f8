"""The answer-seen diagnostics on hand-made predictions whose shares are counted by hand."""

from __future__ import annotations

from search_r1.agent.trajectory import Trajectory, Turn
from search_r1.eval.diagnostics import answer_seen, evidence_hits, seen_texts, summarise


def _pred(em: float, seen: bool | None, searches: int, hits: list[bool] | None = None) -> dict:
    return {
        "metrics": {"em": em},
        "answer_seen": seen,
        "num_searches": searches,
        "evidence_hits": hits,
    }


def test_answer_seen_uses_em_normalisation_and_whole_words() -> None:
    assert answer_seen(["The Eiffel Tower"], ["Doc 1: ...built the eiffel tower, in 1889."])
    assert not answer_seen(["Ann"], ["Anna was born in Paris."])
    assert not answer_seen(["An"], ["an apple"])  # a gold that normalises to nothing occurs nowhere
    assert not answer_seen(["Paris"], [])


def test_seen_texts_are_successful_observations_and_rag_passages() -> None:
    traj = Trajectory(uid="q", prompt_ids=[1])
    traj.turns = [
        Turn(action="search", text="<search>a</search>", observation="Paris is here", retrieval_failed=False),
        Turn(
            action="search", text="<search>b</search>", observation="retrieval failed", retrieval_failed=True
        ),
        Turn(action="answer", text="<answer>x</answer>", observation=""),
    ]
    assert seen_texts(traj, ["rag passage"]) == ["rag passage", "Paris is here"]


def test_evidence_hits_compare_ids_as_strings() -> None:
    assert evidence_hits(["3", 7], {"7", "9"}) == [False, True]


def test_summarise_counts_by_hand() -> None:
    preds = [
        _pred(1.0, True, 1, [True]),
        _pred(1.0, True, 2, [True, True]),
        _pred(0.0, True, 2, [True, False]),  # reading failure
        _pred(0.0, False, 1, [False]),  # retrieval failure
        _pred(0.0, False, 0, [False, False]),  # retrieval failure
        _pred(1.0, False, 0, [False]),  # knew it without finding it
        _pred(0.0, None, 0),  # closed book: not judged
    ]
    d = summarise(preds)
    assert d is not None
    assert d["n"] == 6
    assert d["answer_seen"] == 3 / 6
    assert d["em_when_seen"] == 2 / 3
    assert d["em_when_not_seen"] == 1 / 3
    assert d["wrong"] == 3
    assert d["wrong_retrieval_failure"] == 2 / 3
    assert d["wrong_reading_failure"] == 1 / 3
    assert d["evidence_recall_by_hop"] == {"1": {"n": 6, "recall": 3 / 6}, "2": {"n": 3, "recall": 1 / 3}}
    assert d["em_by_searches_seen"]["0"] == {"not_seen": {"n": 2, "em": 0.5}, "seen": {"n": 0, "em": None}}
    assert d["em_by_searches_seen"]["2"]["seen"] == {"n": 2, "em": 0.5}


def test_summarise_edges() -> None:
    assert summarise([_pred(1.0, None, 0)]) is None
    d = summarise([_pred(1.0, True, 1)])
    assert d is not None
    assert d["wrong"] == 0 and d["wrong_retrieval_failure"] is None and d["em_when_not_seen"] is None
    assert d["evidence_recall_by_hop"] == {}
