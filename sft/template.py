"""Our LLaMA-Factory chat template: the RL rollout's token stream, derived from the model's tokenizer.

The rollout's prompt is ``tokenizer.apply_chat_template([user], add_generation_prompt=True)``; its
response is the policy's turns with the observations appended verbatim — no end-of-turn tokens, no
role headers between turns (generation stops at ``</search>``/``</answer>``, not at EOS). So the
template is:

* user turn: whatever the model's own chat template puts around a single user message, up to and
  including the assistant header (ChatML's ``<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n``,
  with Qwen2.5's default system prompt in front for Qwen2.5). Read off the tokenizer, not hardcoded,
  so the tiny model, SmolLM2 and Qwen2.5 all get exactly their own format;
* assistant (``gpt``) turns: the text as is, no EOS (the rollout never appends one);
* ``observation`` turns: the text as is (it already carries ``\\n\\n<information>…</information>\\n\\n``).

LLaMA-Factory encodes each message separately, and so does the rollout (each turn is generated, each
observation tokenised on its own), which is why the two streams agree token for token.
``replace_jinja_template`` stays off, so the merged model keeps its original chat template.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

TEMPLATE_NAME = "search_r1"
_SENTINEL = "@@SEARCH_R1_USER_MESSAGE@@"


@dataclass(frozen=True)
class ChatFormat:
    """A single-user-turn prompt is ``before + message + after``."""

    before: str
    after: str


def chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
    )
    if text.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not render the user message exactly once")
    before, after = text.split(_SENTINEL)
    return ChatFormat(before, after)


def register_template(tokenizer: PreTrainedTokenizerBase, name: str = TEMPLATE_NAME) -> str:
    """(Re-)register ``name`` in LLaMA-Factory's registry for this tokenizer; returns the name."""
    from llamafactory.data.formatter import StringFormatter
    from llamafactory.data.template import TEMPLATES
    from llamafactory.data.template import register_template as lf_register

    fmt = chat_format(tokenizer)
    TEMPLATES.pop(name, None)  # a previous model's format (several models in one process, e.g. tests)
    lf_register(
        name=name,
        format_user=StringFormatter(slots=[fmt.before + "{{content}}" + fmt.after]),
        format_assistant=StringFormatter(slots=["{{content}}"]),
        format_observation=StringFormatter(slots=["{{content}}"]),
        efficient_eos=False,
        replace_jinja_template=False,
    )
    return name
