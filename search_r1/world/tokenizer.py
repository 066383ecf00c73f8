"""A byte-level BPE tokenizer trained on the world's text, with ChatML and the protocol tags as single ids.

The tags are added as *normal* (non-special) tokens, so decoding with ``skip_special_tokens`` keeps
them, while ``<|im_start|>``/``<|im_end|>``/``<|endoftext|>`` are special as in Qwen2.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from search_r1.agent.protocol import TAGS

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML as Qwen2 writes it, without Qwen's default system prompt (the tiny model has none).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(list(TAGS))  # non-special: kept by decode(skip_special_tokens=True)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    return fast


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: Path) -> None:
    tok.save_pretrained(out_dir)
