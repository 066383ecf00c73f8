"""The format reward: a state machine over the tag grammar of DESIGN §4.

A well-formed response is, after optional whitespace between segments::

    ( <think>…</think> <search>…</search> <information>…</information> )*
      <think>…</think> <answer>…</answer>

``<think>`` is optional before an action when ``require_think`` is False. Text outside the
segments, a tag inside a segment, an unclosed tag or anything after ``</answer>`` makes the response
ill-formed. The machine reads the tag sequence once, left to right.
"""

from __future__ import annotations

import re

from search_r1.agent.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    INFO_CLOSE,
    INFO_OPEN,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    TAGS,
    THINK_CLOSE,
    THINK_OPEN,
)

_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in TAGS) + ")")

# state -> {tag: next state}; segment bodies are consumed by the "in_*" states.
_START, _THOUGHT, _SEARCHED, _OBSERVED, _DONE = "start", "thought", "searched", "observed", "done"
_TRANSITIONS = {
    _START: {THINK_OPEN: "in_think", SEARCH_OPEN: "in_search", ANSWER_OPEN: "in_answer"},
    _THOUGHT: {SEARCH_OPEN: "in_search", ANSWER_OPEN: "in_answer"},
    _SEARCHED: {INFO_OPEN: "in_info"},
    _OBSERVED: {THINK_OPEN: "in_think", SEARCH_OPEN: "in_search", ANSWER_OPEN: "in_answer"},
    "in_think": {THINK_CLOSE: _THOUGHT},
    "in_search": {SEARCH_CLOSE: _SEARCHED},
    "in_info": {INFO_CLOSE: _OBSERVED},
    "in_answer": {ANSWER_CLOSE: _DONE},
}


def is_valid_format(response: str, require_think: bool = True) -> bool:
    """Whether a response follows the tag grammar (the response only: never pass the prompt)."""
    state = _START
    for piece in _SPLIT.split(response):
        if piece in TAGS:
            nxt = _TRANSITIONS.get(state, {}).get(piece)
            if nxt is None:
                return False
            if require_think and piece in (SEARCH_OPEN, ANSWER_OPEN) and state != _THOUGHT:
                return False
            state = nxt
        elif piece.strip() and not state.startswith("in_"):
            return False  # free text between segments
    return state == _DONE
