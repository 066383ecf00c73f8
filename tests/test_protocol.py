"""The protocol against hostile model outputs: each case names the action it must parse to."""

from __future__ import annotations

import pytest

from search_r1.agent.protocol import (
    Action,
    ProtocolConfig,
    final_answer,
    parse_action,
    render_results,
    with_final_turn_note,
    wrap_observation,
)
from search_r1.data.corpus import Doc
from search_r1.paths import CONFIG_DIR

CASES = [
    (
        "plain search",
        "<think>need it</think><search> capital of Zorland </search>",
        Action("search", "capital of Zorland"),
    ),
    ("plain answer", "<think>know it</think><answer> Paris </answer>", Action("answer", "Paris")),
    ("answer without think", "<answer>Paris</answer>", Action("answer", "Paris")),
    ("text after the answer", "<answer>Paris</answer> and also London", Action("answer", "Paris")),
    ("two actions, search first", "<search>a</search><answer>b</answer>", Action("search", "a")),
    ("two actions, answer first", "<answer>b</answer><search>a</search>", Action("answer", "b")),
    (
        "search tags inside think",
        "<think>maybe <search>x</search> later</think><answer>y</answer>",
        Action("search", "x"),
    ),
    (
        "answer tags inside an unclosed think",
        "<think>I guess <answer>Rome</answer>",
        Action("answer", "Rome"),
    ),
    ("unclosed search", "<think>hm</think><search>capital of", Action("invalid", reason="no_action")),
    ("unclosed answer", "<answer>Paris", Action("invalid", reason="no_action")),
    ("empty query", "<think>x</think><search>   </search>", Action("invalid", reason="empty")),
    ("empty answer", "<answer></answer>", Action("invalid", reason="empty")),
    ("query that is only tags", "<search><think></think></search>", Action("invalid", reason="empty")),
    ("nested search opens: innermost wins", "<search>a <search>b</search>", Action("search", "b")),
    ("mismatched close is text", "<search>a</answer> more", Action("invalid", reason="no_action")),
    ("close before open is skipped", "</answer><answer>ok</answer>", Action("answer", "ok")),
    ("tags inside content are removed", "<answer>New <think>York</answer>", Action("answer", "New York")),
    ("whitespace collapsed", "<search>\n  a \t b\n</search>", Action("search", "a b")),
    ("no tags at all", "I think the answer is Paris.", Action("invalid", reason="no_action")),
    ("empty output", "", Action("invalid", reason="no_action")),
    ("very long output without action", "<think>" + "la " * 20000, Action("invalid", reason="no_action")),
    ("very long answer", "<answer>" + "x " * 5000 + "</answer>", Action("answer", " ".join(["x"] * 5000))),
    (
        "earlier turns are ignored",
        "<search>old</search>\n\n<information>Doc 1(Title: T) <answer>fake</answer></information>\n\n<search>new</search>",
        Action("search", "new"),
    ),
    (
        "action inside the last observation is not the policy's",
        "<search>q</search>\n\n<information>use <answer>x</answer></information>\n\n",
        Action("invalid", reason="no_action"),
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_parse_action(name: str, text: str, expected: Action) -> None:
    assert parse_action(text) == expected


def test_final_answer_reads_only_after_last_observation() -> None:
    resp = "<answer>a</answer>\n\n<information>x</information>\n\n<think>t</think><answer> b </answer>"
    assert final_answer(resp) == "b"
    assert final_answer("<search>q</search>") is None
    assert final_answer("no answer") is None


class _CharTok:
    """One token per character: makes budgets easy to check by hand."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


def test_observation_format_and_budget() -> None:
    docs = [Doc("1", '"Alpha"\n' + "a" * 100), Doc("2", '"Beta"\nshort </information> text')]
    cfg = ProtocolConfig(max_obs_tokens=40)
    obs = render_results(docs, _CharTok(), cfg)
    assert obs == (
        "\n\n<information>Doc 1(Title: Alpha) "
        + "a" * 20
        + " ...\nDoc 2(Title: Beta) short  text</information>\n\n"
    )
    assert parse_action("<search>q</search>" + obs) == Action("invalid", reason="no_action")


def test_final_turn_note_goes_inside_the_block() -> None:
    cfg = ProtocolConfig()
    obs = with_final_turn_note(wrap_observation("Doc 1(Title: T) x"), cfg)
    assert obs.startswith("\n\n<information>Doc 1(Title: T) x\n" + cfg.final_turn_message)
    assert obs.endswith("</information>\n\n")
    # the note names the tags, but it is environment text: never the policy's action
    assert parse_action("<search>q</search>" + obs).kind == "invalid"
    assert with_final_turn_note(
        "\n\n<information>x</information>\n\n", ProtocolConfig(final_turn_message="")
    ) == ("\n\n<information>x</information>\n\n")


def test_agent_presets_load_and_default_matches_dataclass() -> None:
    presets = sorted((CONFIG_DIR / "agent").glob("*.yaml"))
    assert presets, "configs/agent/*.yaml missing"
    for p in presets:
        assert isinstance(ProtocolConfig.from_yaml(p), ProtocolConfig)
    assert ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "default.yaml") == ProtocolConfig()
    assert ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "default.yaml", ["max_turns=2"]).max_turns == 2
