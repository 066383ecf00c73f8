"""What the tiny base model reads before it ever sees the search protocol.

Three kinds of example, chosen so the four experiment groups mean something at toy scale:

* **passages** — plain text of the *famous* entities and the Wikipedia distractors (fluency);
* **closed-book QA** — the world's questions about famous entities, answered as
  ``<answer> X </answer>`` (the facts it knows by heart, in the answer format);
* **reading QA** — a question with passages in the prompt (the ``rag`` template), about *practice*
  entities that exist nowhere in the corpus: the model learns to read and copy, not the facts.

It never sees ``<search>`` or ``<information>``: searching is what SFT and RL have to teach.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from search_r1.agent.prompt import render_prompt
from search_r1.agent.protocol import ANSWER_CLOSE, ANSWER_OPEN, format_docs
from search_r1.data.corpus import Doc, iter_corpus, make_contents
from search_r1.world.build import World
from search_r1.world.kb import generate_kb
from search_r1.world.questions import generate_questions


@dataclass
class Example:
    prompt: list[dict[str, str]] | None  # chat messages; None for plain text
    target: str  # assistant reply (chat) or the whole text (plain)
    kind: str  # passage | closed_book | reading


def answer_text(answer: str) -> str:
    return f"{ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def build_examples(
    world: World, seed: int, n_practice_people: int = 150, distractors: int = 2
) -> list[Example]:
    rng = random.Random(seed)
    kb = json.loads(world.kb.read_text(encoding="utf-8"))
    famous = set(kb["famous"])
    questions = [json.loads(line) for line in world.questions.open(encoding="utf-8")]
    template = json.loads(world.manifest.read_text())["config"]["prompt_template"]

    examples: list[Example] = []
    for doc in iter_corpus(world.corpus):
        is_kb = doc.id.startswith("kb-")
        if not is_kb or doc.title in famous:
            examples.append(Example(None, f"{doc.title}\n{doc.text}", "passage"))
    for q in questions:
        if q["known"]:
            examples.append(
                Example(render_prompt(q["question"], template), answer_text(q["answer"]), "closed_book")
            )

    practice = generate_kb(random.Random(seed + 7919), 8, 30, n_practice_people, 30)
    docs = {e.doc_id: Doc(e.doc_id, make_contents(e.name, e.passage)) for e in practice.entities}
    pool = list(docs.values())
    for q in generate_questions(practice):
        shown = [docs[d] for d in q.support]
        shown += rng.sample([d for d in pool if d.id not in q.support], distractors)
        rng.shuffle(shown)
        prompt = render_prompt(q.question, "rag", information=format_docs(shown))
        examples.append(Example(prompt, answer_text(q.answer), "reading"))
    return examples
