"""Answer metrics, each defined once; evaluation and the RL reward both call these.

* ``normalize_answer`` — SQuAD v1.1's normalisation: lowercase, drop punctuation (ASCII and
  Unicode ``P*`` categories), drop the articles a/an/the, collapse whitespace. Unicode letters are
  kept (NFKC-folded, so "ﬁ" == "fi"), unlike rouge-score's tokenizer.
* ``exact_match`` — normalised prediction == a normalised gold (max over golds).
* ``cover_exact_match`` — sub-EM / cover-EM: a normalised gold occurs in the normalised prediction
  as a whole-word span (max over golds). An exact match is always a cover match, so sub-EM ≥ EM
  for every prediction and gold.
* ``token_f1`` — SQuAD token-overlap F1 on normalised tokens (max over golds).
* ``rouge_l`` — ROUGE-L F-measure from the ``rouge-score`` package, ``RougeScorer(["rougeL"],
  use_stemmer=False)`` with its default tokenizer (lowercase, ASCII alphanumeric tokens), on the
  raw strings, max over golds. Its tokenizer drops non-ASCII letters, so a prediction that is all
  non-ASCII scores 0; EM/F1 above do not have that limit.

A missing prediction (``None``, the model never answered) and an empty one score 0 everywhere. So
does a gold that normalises to nothing ("the", "?!"): it names no answer, and without this rule EM
would credit any article- or punctuation-only prediction ("a" == "the" once both are empty) while
sub-EM and F1, which need a word to match, gave 0 — sub-EM below EM.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(ch for ch in s if not _is_punct(ch))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def _max_over(
    metric: Callable[[str, str], float], prediction: str | None, golds: str | Sequence[str]
) -> float:
    if not prediction:
        return 0.0
    return max((metric(prediction, g) for g in _as_golds(golds)), default=0.0)


def _em(pred: str, gold: str) -> float:
    g = normalize_answer(gold)
    return float(bool(g) and normalize_answer(pred) == g)


def _cover_em(pred: str, gold: str) -> float:
    g = normalize_answer(gold)
    return float(bool(g) and f" {g} " in f" {normalize_answer(pred)} ")


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _rouge_l(pred: str, gold: str) -> float:
    return _rouge().score(gold, pred)["rougeL"].fmeasure


def exact_match(prediction: str | None, golds: str | Sequence[str]) -> float:
    return _max_over(_em, prediction, golds)


def cover_exact_match(prediction: str | None, golds: str | Sequence[str]) -> float:
    return _max_over(_cover_em, prediction, golds)


def token_f1(prediction: str | None, golds: str | Sequence[str]) -> float:
    return _max_over(_f1, prediction, golds)


def rouge_l(prediction: str | None, golds: str | Sequence[str]) -> float:
    return _max_over(_rouge_l, prediction, golds)


# How each metric is computed, written into results.json next to the numbers.
METRIC_DEFINITIONS = {
    "em": "exact match after SQuAD normalisation (lowercase, no punctuation/articles, collapsed "
    "whitespace, NFKC), max over gold answers, on the response's final <answer> only; a gold that "
    "normalises to nothing matches nothing",
    "cover_em": "sub-EM: a normalised gold is a whole-word span of the normalised answer, max over golds",
    "f1": "SQuAD token F1 on normalised tokens, max over golds",
    "rouge_l": "rouge-score 0.1.2 rougeL F-measure, use_stemmer=False, default tokenizer, raw strings, "
    "max over golds",
}
