"""Failed searches in an evaluation: their share, and the refusal to publish a score built on them.

A retriever outage becomes failure observations in the rollout (``search_r1.agent.rollout._search``),
which is right for training (the step goes on and counts them) but wrong for a score: a run whose
searches mostly failed measures the outage, not the model. ``eval`` and the post-SFT check
(``sft.evaluate``) both count the failed searches next to their scores and refuse to publish above
``max_failed_share``; this is the one place that decides.
"""

from __future__ import annotations

REFUSED_EXIT = 3  # the exit code of a stage that refused to publish (or left work for a rerun)


def failed_share(failed: int, searches: int) -> float:
    """Failed searches / searches; 0 when nothing was searched (a closed-book run cannot fail)."""
    return failed / searches if searches else 0.0


def refusal(failed: int, searches: int, max_share: float, url: str) -> str | None:
    """The one-line reason to refuse a score, or None when ``failed / searches <= max_share``."""
    share = failed_share(failed, searches)
    if share <= max_share:
        return None
    return (
        f"refused: {failed} of {searches} searches failed ({share:.0%}) > max_failed_share={max_share}; "
        f"the retriever at {url} was down — rerun when it is up"
    )


def failed_note(failed: int, searches: int) -> str:
    """The summary-line mention of failed searches: empty when there were none."""
    return f"  {failed} of {searches} searches FAILED" if failed else ""


class Refused(Exception):
    """An evaluation refused to publish its score (the message is :func:`refusal`'s line)."""
