"""Shared pieces of the SFT tests: a fast tokenizer like the tiny model's, and an in-memory retriever."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from search_r1.world.build import World

# Qwen2.5-Instruct's chat template, the branch without tools (verbatim from its tokenizer_config.json):
# a default system prompt, then ChatML.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(world: World, out_dir: Path, chat_template: str | None = None) -> Path:
    """The tiny model's tokenizer recipe (BPE on world text, tags as single ids, ChatML) in ~2 s."""
    from search_r1.world.tokenizer import train_tokenizer

    texts = [json.loads(line)["contents"] for line in world.corpus.open(encoding="utf-8")]
    tok = train_tokenizer(texts, vocab_size=2048)
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class Doc:
    id: str
    title: str
    text: str


class TitleRetriever:
    """Returns the corpus passages whose title the query names (then others): deterministic, no server."""

    def __init__(self, corpus: Path):
        from search_r1.data.corpus import split_contents

        self.docs = []
        for line in corpus.open(encoding="utf-8"):
            r = json.loads(line)
            title, text = split_contents(r["contents"])
            self.docs.append(Doc(str(r["id"]), title, text))
        self.calls = 0

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Doc]]:
        self.calls += 1
        k = topk or 3
        out = []
        for q in queries:
            hits = [d for d in self.docs if d.title.lower() == q.lower()]
            hits += [d for d in self.docs if q.lower() in d.text.lower() and d not in hits]
            out.append(hits[:k])
        return out
