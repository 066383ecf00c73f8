"""Real Wikipedia passages as distractors, from the shortened English dump inside gensim's wheel.

gensim is installed with ``--no-deps`` only for this file; its own article segmenter and markup
filter do the parsing. Passages are 100-word chunks, as in the wiki-18 corpus.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

DUMP_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WS = re.compile(r"\s+")
_LEFTOVER_MARKUP = re.compile(r"'{2,}|\[\[|\]\]|\{\{|\}\}|={2,}|<[^>]+>")


def dump_path() -> Path:
    """The bundled dump; a clear error when gensim is not installed."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "gensim is not installed: run scripts/setup_env.sh (it ships the Wikipedia dump)"
        )
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / DUMP_NAME
    if not path.exists():
        raise FileNotFoundError(f"the Wikipedia dump is missing from the gensim package: {path}")
    return path


def iter_wiki_passages(words_per_passage: int = 100, min_words: int = 40) -> Iterator[tuple[str, str]]:
    """``(title, text)`` chunks in dump order (deterministic)."""
    from gensim.corpora.wikicorpus import filter_wiki
    from gensim.scripts.segment_wiki import segment_all_articles

    for title, sections, *_ in segment_all_articles(str(dump_path()), min_article_character=200):
        for _heading, body in sections:
            text = _WS.sub(" ", _LEFTOVER_MARKUP.sub("", filter_wiki(body))).strip()
            words = text.split()
            for i in range(0, len(words), words_per_passage):
                chunk = words[i : i + words_per_passage]
                if len(chunk) >= min_words:
                    yield title, " ".join(chunk)
