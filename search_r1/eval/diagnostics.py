"""Why an answer was wrong: did a gold answer ever reach the model?

A wrong answer whose gold never appeared in what the retriever returned is a *retrieval failure*
(better reading cannot fix it); one whose gold was in front of the model is a *reading failure*.
"Appeared" is judged as sub-EM judges a prediction (``cover_exact_match``): a gold, normalised as EM
normalises it, is a whole-word span of the normalised passage text. The texts are the observations
the model actually read (after truncation to ``max_obs_tokens``), or the passages of the ``rag``
prompt; a closed-book run has no retrieval, so its diagnostics are ``None``.

Where a question names its supporting passages (the embedded world's ``extra_info.support``, one id
per hop), *evidence recall per hop* is the share of questions whose hop-``h`` passage id was among
the ids retrieved anywhere in the trajectory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from search_r1.agent.trajectory import Trajectory
from search_r1.rewards.metrics import cover_exact_match

DIAGNOSTIC_DEFINITIONS = {
    "answer_seen": "share of questions where a normalised gold answer is a whole-word span of a "
    "retrieved text the model read (observations after truncation, or the rag passages)",
    "em_when_seen": "EM of the questions whose gold answer was seen (null when none was)",
    "em_when_not_seen": "EM of the questions whose gold answer was never seen (null when all were)",
    "wrong_retrieval_failure": "share of wrong answers (EM 0) whose gold was never retrieved",
    "wrong_reading_failure": "share of wrong answers (EM 0) whose gold was retrieved and read",
    "evidence_recall_by_hop": "per hop h: share of questions with >= h supporting passages whose "
    "hop-h passage id was retrieved in any turn (datasets that name supporting passages only)",
    "em_by_searches_seen": "EM grouped by number of searches, split by whether the gold was seen",
}


def seen_texts(traj: Trajectory, rag_passages: Sequence[str] = ()) -> list[str]:
    """What the retriever put in front of the model: successful observations and rag passages."""
    return [
        *rag_passages,
        *(t.observation for t in traj.turns if t.action == "search" and not t.retrieval_failed),
    ]


def answer_seen(golds: Sequence[str], texts: Sequence[str]) -> bool:
    return any(cover_exact_match(text, golds) for text in texts)


def evidence_hits(support: Sequence[str], retrieved_ids: set[str]) -> list[bool]:
    """For each hop's supporting passage id, whether it was retrieved."""
    return [str(s) in retrieved_ids for s in support]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarise(preds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The diagnostics of a group of predictions; None when nothing was retrieved (closed book)."""
    judged = [p for p in preds if p.get("answer_seen") is not None]
    if not judged:
        return None
    seen = [p for p in judged if p["answer_seen"]]
    not_seen = [p for p in judged if not p["answer_seen"]]
    wrong = [p for p in judged if p["metrics"]["em"] == 0]
    wrong_unseen = sum(not p["answer_seen"] for p in wrong)
    by_hop: dict[int, list[bool]] = defaultdict(list)
    for p in judged:
        for h, hit in enumerate(p.get("evidence_hits") or [], start=1):
            by_hop[h].append(hit)
    by_searches: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"seen": [], "not_seen": []})
    for p in judged:
        by_searches[p["num_searches"]]["seen" if p["answer_seen"] else "not_seen"].append(p["metrics"]["em"])
    return {
        "n": len(judged),
        "answer_seen": len(seen) / len(judged),
        "em_when_seen": _mean([p["metrics"]["em"] for p in seen]),
        "em_when_not_seen": _mean([p["metrics"]["em"] for p in not_seen]),
        "wrong": len(wrong),
        "wrong_retrieval_failure": wrong_unseen / len(wrong) if wrong else None,
        "wrong_reading_failure": (len(wrong) - wrong_unseen) / len(wrong) if wrong else None,
        "evidence_recall_by_hop": {
            str(h): {"n": len(v), "recall": sum(v) / len(v)} for h, v in sorted(by_hop.items())
        },
        "em_by_searches_seen": {
            str(k): {part: {"n": len(v), "em": _mean(v)} for part, v in parts.items()}
            for k, parts in sorted(by_searches.items())
        },
    }
