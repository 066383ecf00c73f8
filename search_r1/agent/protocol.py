"""The search protocol (DESIGN §4): tags, stop strings, action parsing and observation rendering.

This is the only module that knows the tag grammar; teacher generation, SFT export, the RL rollout,
the reward and evaluation all import it from here.

The policy writes ``<think>…</think>`` and then one action, ``<search> q </search>`` or
``<answer> a </answer>``. Generation stops at the action's closing tag, the environment appends an
observation (always wrapped in ``<information>…</information>``, including the corrective message
for an invalid action), and the policy continues. Parsing rules, all deterministic:

* Only text after the last ``</information>`` is looked at (earlier turns were already parsed).
* The action is the *first complete* one: the earliest closing tag (``</search>`` or ``</answer>``)
  that has a matching opening tag before it — exactly where a stop string would have cut the text.
  Its content runs from the *last* matching opening tag before that closing tag, so
  ``<search>a <search>b</search>`` searches ``b``. Tags inside ``<think>`` count like any other:
  the engine stops at them too, so parsing agrees with generation.
* Protocol tags inside the content are removed, whitespace is collapsed; an empty content makes
  the action invalid (an empty query is not sent to the retriever).
* Anything after the first complete action (a second action, text after the answer) is ignored.
* No complete action → invalid (the rollout answers with :data:`ProtocolConfig.invalid_message`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, SEARCH_OPEN, SEARCH_CLOSE, INFO_OPEN, INFO_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)

_TAG_RE = re.compile("|".join(re.escape(t) for t in TAGS))
_ACTION_CLOSE_RE = re.compile(f"{re.escape(SEARCH_CLOSE)}|{re.escape(ANSWER_CLOSE)}")
_OPEN_OF = {SEARCH_CLOSE: SEARCH_OPEN, ANSWER_CLOSE: ANSWER_OPEN}
_KIND_OF = {SEARCH_CLOSE: "search", ANSWER_CLOSE: "answer"}


@dataclass
class ProtocolConfig:
    """Every knob of the protocol; ``configs/agent/*.yaml`` hold presets (``ProtocolConfig.from_yaml``)."""

    max_turns: int = field(
        default=4,
        metadata={
            "help": "turns that get an observation (searches and invalid actions); then one final "
            "turn in which only an answer counts (a search then gets no results)"
        },
    )
    topk: int = field(default=3, metadata={"help": "passages per search"})
    max_obs_tokens: int = field(
        default=512, metadata={"help": "token budget of the passages in one observation (split evenly)"}
    )
    max_turn_tokens: int = field(default=512, metadata={"help": "max new tokens in one model turn"})
    max_response_tokens: int = field(
        default=2048, metadata={"help": "budget of the whole response (policy + observation tokens)"}
    )
    invalid_message: str = field(
        default="My previous action is invalid. To search, put the query between <search> and "
        "</search>. To give the final answer, put it between <answer> and </answer>. Let me try again.",
        metadata={"help": "observation after an output with no complete action (inside <information>)"},
    )
    failure_message: str = field(
        default="The search failed ({error}). Try again or answer with what you know.",
        metadata={"help": "observation when the retriever fails; {error} is the error type"},
    )
    final_turn_message: str = field(
        default="No searches left. Give the final answer now between <answer> and </answer>.",
        metadata={"help": "added inside the last observation before the final turn ('' = nothing)"},
    )

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> ProtocolConfig:
        from search_r1.config import load_config

        return load_config(cls, Path(path), overrides)


@dataclass(frozen=True)
class Action:
    kind: str  # "search" | "answer" | "invalid"
    content: str = ""  # the query or the answer, cleaned
    reason: str = ""  # why an action is invalid: "no_action" | "empty"
    end: int = field(default=-1, compare=False)  # offset just past the closing tag (-1: none)


def _clean(content: str) -> str:
    return " ".join(_TAG_RE.sub(" ", content).split())


def after_last_observation(text: str) -> str:
    """The part of a response the policy wrote after the environment last spoke."""
    cut = text.rfind(INFO_CLOSE)
    return text if cut < 0 else text[cut + len(INFO_CLOSE) :]


def parse_action(text: str) -> Action:
    """The first complete action after the last observation (rules in the module docstring).

    ``end`` is an offset into the text after the last observation (the turn's own text).
    """
    text = after_last_observation(text)
    for m in _ACTION_CLOSE_RE.finditer(text):
        close = m.group()
        start = text.rfind(_OPEN_OF[close], 0, m.start())
        if start < 0:
            continue  # a closing tag without its opening tag is just text
        content = _clean(text[start + len(_OPEN_OF[close]) : m.start()])
        if not content:
            return Action("invalid", reason="empty", end=m.end())
        return Action(_KIND_OF[close], content, end=m.end())
    return Action("invalid", reason="no_action")


def final_answer(response: str) -> str | None:
    """The answer a response ends with, or None: what rewards and metrics score (never the prompt)."""
    action = parse_action(response)
    return action.content if action.kind == "answer" else None


class TitledDoc(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def format_docs(docs: Sequence[TitledDoc]) -> str:
    """Passages as the predecessor rendered them: ``Doc 1(Title: T) text`` one per line."""
    return "\n".join(f"Doc {i}(Title: {d.title}) {d.text}" for i, d in enumerate(docs, start=1))


class TextTokenizer(Protocol):
    """What the protocol needs from a tokenizer (any Hugging Face tokenizer fits)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class _Doc:
    title: str
    text: str


def strip_tags(text: str) -> str:
    """Remove protocol tags from environment text so a passage can never fake a tag."""
    return _TAG_RE.sub("", text)


def truncate_docs(docs: Sequence[TitledDoc], tokenizer: TextTokenizer, budget: int) -> list[_Doc]:
    """Each passage's text cut to an equal share of ``budget`` tokens (titles are kept whole)."""
    if not docs:
        return []
    share = max(1, budget // len(docs))
    out = []
    for d in docs:
        text = strip_tags(d.text)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > share:
            text = tokenizer.decode(ids[:share], skip_special_tokens=True).rstrip() + " ..."
        out.append(_Doc(strip_tags(d.title), text))
    return out


def wrap_observation(body: str) -> str:
    """The exact text appended after a turn: ``\\n\\n<information>body</information>\\n\\n``."""
    return f"\n\n{INFO_OPEN}{body}{INFO_CLOSE}\n\n"


def render_results(docs: Sequence[TitledDoc], tokenizer: TextTokenizer, cfg: ProtocolConfig) -> str:
    return wrap_observation(format_docs(truncate_docs(docs, tokenizer, cfg.max_obs_tokens)))


def render_invalid(cfg: ProtocolConfig) -> str:
    return wrap_observation(cfg.invalid_message)


def render_failure(error: BaseException, cfg: ProtocolConfig) -> str:
    return wrap_observation(cfg.failure_message.format(error=type(error).__name__))


def with_final_turn_note(observation: str, cfg: ProtocolConfig) -> str:
    """The last observation before the final turn: the forced-answer note goes inside the block,
    so the note's own tag names are never parsed as the policy's action."""
    if not cfg.final_turn_message:
        return observation
    cut = observation.rindex(INFO_CLOSE)
    return f"{observation[:cut]}\n{cfg.final_turn_message}{observation[cut:]}"
