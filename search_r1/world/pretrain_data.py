"""What the tiny base model reads before it ever sees the search protocol.

Kinds of example, chosen so the four experiment groups mean something at toy scale:

* **copy drills** — a list of names, then the same list again; the first steps of training use only
  these, because copying does not form in the full mix (``docs/benchmarks.md``);
* **passages** — plain text of the *famous* entities and some Wikipedia passages (fluency);
* **closed-book QA** — the world's questions about famous entities, answered as
  ``<answer> X </answer>`` (the facts it knows by heart, in the answer format);
* **closed-book drills** (optional, off in the committed config) — the same facts as plain
  ``Question: q Answer: a`` lines, a few per sequence, loss on the answers: the form of the SFT
  teacher's thoughts (``sft.oracle``). Without them the model recalls 0.94 of its facts right after
  the prompt and 0.02 after ``<think> Question: q Answer:``; with them 0.17, and reading rises, but
  the SFT student is no better (``docs/benchmarks.md``, SFT, session 5);
* **reading QA** — a question with passages in the prompt (the ``rag`` template), over
  *counterfactual* knowledge bases: the world's own names with freshly drawn facts, a new draw
  every few hundred questions. No fact repeats often enough to be memorised and none is true of the
  real world, so the only way to answer is to find the passage about the subject and copy from it —
  the skill a search agent needs. Distractors are chosen as a retriever would rank them: passages
  that mention the subject first;
* **reading drills** — passages followed by every question they answer, in plain text, with the
  loss on the answers only: ten-odd supervised copies per sequence where a chat reading example
  has one. This density is what makes reading learnable in a CPU budget (``docs/benchmarks.md``:
  the same drills with the loss on every token stall at 0.15 answer accuracy, answer-only loss
  reaches 0.58 by step 3,000 when trained alone).
* **tool-use demos** (optional) — the experiment's own prompt over a counterfactual single-hop
  question: for a share of subjects that nothing in the wording predicts (a hash of the name), one
  search, the passages a retriever would return as the observation (not trained), a short thought
  and the answer; for the others a plain ``<answer> unknown </answer>``. The model cannot tell which
  subject is which, so it learns to start a search *sometimes*, as an instruct model that has seen
  tool use does, and RL alone has behaviour to reinforce. Declining rather than guessing keeps the
  memorised facts: a guess on the experiment's prompt teaches that answers there are noise
  (``docs/benchmarks.md``). The thoughts are generic on purpose: restating the question
  (``recall``) is the SFT teacher's cue, and multi-hop searching is left to SFT and RL.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from search_r1.agent.prompt import render_prompt
from search_r1.agent.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    format_docs,
    wrap_observation,
)
from search_r1.data.corpus import Doc, iter_corpus, make_contents
from search_r1.world.build import World
from search_r1.world.kb import name_pools, recast_kb
from search_r1.world.questions import SINGLE_HOP, WorldQuestion, generate_questions


@dataclass
class Example:
    prompt: list[dict[str, str]] | None  # chat messages; None for plain text
    target: str  # assistant reply (chat) or the whole text (plain)
    kind: str  # passage | closed_book | closed_book_drill | reading | reading_drill | copy | tool_demo | decline
    loss_on_prompt: bool = False  # train on the prompt too (reading: names recur across passages)
    spans: tuple[tuple[str, bool], ...] = ()  # ``target`` as (piece, trained) pieces, tokenised apart


def answer_text(answer: str) -> str:
    return f"{ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def recall(question: str, answer: str) -> str:
    """A question and its answer in the drill form: what a thought says once the answer is known."""
    return f"Question: {question} Answer: {answer}."


def shown_docs(
    support: Sequence[Doc], names: Sequence[str], pool: Sequence[Doc], n_docs: int, rng: random.Random
) -> list[Doc]:
    """The gold passages plus distractors up to ``n_docs``, shuffled: passages that mention one of
    ``names`` first (what a lexical retriever returns beside the gold one), then random ones."""
    gold = {d.id for d in support}
    mentions = [d for d in pool if d.id not in gold and any(n in d.contents for n in names)]
    others = [d for d in pool if d.id not in gold and d not in mentions]
    n_extra = max(0, n_docs - len(support))
    extra = rng.sample(mentions, min(n_extra, len(mentions)))
    extra += rng.sample(others, min(n_extra - len(extra), len(others)))
    shown = list(support) + extra
    rng.shuffle(shown)
    return shown


def reading_example(q: WorldQuestion, docs: dict[str, Doc], n_docs: int, rng: random.Random) -> Example:
    support = [docs[d] for d in q.support]
    shown = shown_docs(support, q.entities, list(docs.values()), n_docs, rng)
    prompt = render_prompt(q.question, "rag", information=format_docs(shown))
    return Example(prompt, answer_text(q.answer), "reading", loss_on_prompt=True)


def copy_drill(names: Sequence[str], rng: random.Random, length: int = 8) -> Example:
    """A list of names, then the same list again: the second half is pure copying, the cheapest
    signal for the attention pattern (find the earlier occurrence, emit what followed) reading builds on."""
    listed = ", ".join(rng.sample(list(names), length))
    return Example(None, f"Names: {listed}.\nAgain: {listed}.", "copy")


def counterfactual_kbs(kb: dict, rng: random.Random) -> Iterator[tuple[dict[str, Doc], list[WorldQuestion]]]:
    """Endless counterfactual knowledge bases: the passages of each and its questions, shuffled."""
    pools = name_pools(kb)
    while True:
        practice = recast_kb(pools, rng)
        docs = {e.doc_id: Doc(e.doc_id, make_contents(e.name, e.passage)) for e in practice.entities}
        questions = generate_questions(practice)
        rng.shuffle(questions)
        yield docs, questions


def qa_spans(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """``Question: q Answer: a`` lines with only the answers trained: the drill form."""
    spans = []
    for question, answer in pairs:
        spans += [(f"Question: {question} Answer:", False), (f" {answer}\n", True)]
    return spans


def drill(spans: Sequence[tuple[str, bool]], kind: str) -> Example:
    return Example(None, "".join(p for p, _ in spans), kind, spans=tuple(spans))


def reading_drill(
    docs: dict[str, Doc], questions: list[WorldQuestion], n_docs: int, rng: random.Random
) -> Example:
    """Passages followed by every single-hop question they answer, shuffled, each with its answer;
    only the answers are trained (``Example.spans``)."""
    shown = rng.sample(list(docs.values()), n_docs)
    ids = {d.id for d in shown}
    asked = [q for q in questions if q.hops == 1 and q.support[0] in ids]
    rng.shuffle(asked)
    spans = [(format_docs(shown) + "\n", False)] + qa_spans([(q.question, q.answer) for q in asked])
    return drill(spans, "reading_drill")


# Generic thoughts of the tool-use demos: before the search, and after it with the answer.
_BEFORE_SEARCH = ("I do not know this. Let me search.", "I need to look this up.", "Let me search for it.")
_AFTER_SEARCH = ("I found it.", "The results have it.", "Now I know.")


def tool_demo(
    q: WorldQuestion, docs: dict[str, Doc], template: str, n_docs: int, rng: random.Random
) -> Example:
    """The experiment's prompt over ``q`` (single hop) answered by a search, its observation
    (untrained, tokenised apart as the rollout appends it) and the answer read from it."""
    support = [docs[d] for d in q.support]
    shown = shown_docs(support, q.entities, list(docs.values()), n_docs, rng)
    search = f"{THINK_OPEN} {rng.choice(_BEFORE_SEARCH)} {THINK_CLOSE}\n{SEARCH_OPEN} {q.queries[0]} {SEARCH_CLOSE}"
    answer = f"{THINK_OPEN} {rng.choice(_AFTER_SEARCH)} {THINK_CLOSE}\n{answer_text(q.answer)}"
    spans = ((search, True), (wrap_observation(format_docs(shown)), False), (answer, True))
    return Example(
        render_prompt(q.question, template), "".join(p for p, _ in spans), "tool_demo", spans=spans
    )


DECLINED = "unknown"


def decline(q: WorldQuestion, template: str) -> Example:
    """The experiment's prompt over ``q`` answered without a search by admitting it is not known:
    the other choice of the tool-use demos. Unlike a guess it teaches nothing false, so the
    memorised facts of the closed-book examples keep their answers (``docs/benchmarks.md``)."""
    return Example(render_prompt(q.question, template), answer_text(DECLINED), "decline")


def is_demo_subject(name: str, share: float, seed: int) -> bool:
    """Whether a demo about ``name`` searches (else it declines): a hash of the name, so a random
    ``share`` of subjects (people too, whose names counterfactual worlds recombine) and nothing in
    the question's wording tells which."""
    return zlib.crc32(f"{seed}:{name}".encode()) < share * 2**32


def build_examples(
    world: World,
    seed: int,
    reading_examples: int = 4000,
    reading_drills: int = 0,
    max_docs: int = 3,
    copy_drills: int = 1000,
    closed_book_drills: int = 0,
    facts_per_drill: int = 8,
    tool_demos: int = 0,
    tool_demo_relations: Sequence[str] = (),
    tool_demo_subject_share: float = 1.0,
) -> list[Example]:
    """One data epoch: every passage, every known fact once, ``reading_examples`` fresh reading
    questions with 1 to ``max_docs`` passages each (mostly the full ``max_docs``, as retrieval gives),
    ``reading_drills`` multi-question reading texts, ``copy_drills`` name-list repetitions,
    ``closed_book_drills`` texts of ``facts_per_drill`` known facts each and ``tool_demos`` tool-use
    demos over questions of ``tool_demo_relations`` (searching for a random
    ``tool_demo_subject_share`` of subjects, declining for the rest), on their own random streams so
    the other kinds do not change with them."""
    if tool_demos and (not tool_demo_relations or set(tool_demo_relations) - set(SINGLE_HOP)):
        raise ValueError(
            f"tool_demo_relations {list(tool_demo_relations)} must name single-hop relations: {sorted(SINGLE_HOP)}"
        )
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

    doc_counts = list(range(1, max_docs + 1)) + [max_docs] * max_docs
    per_kb = 200  # reading questions drawn from one counterfactual world before the next
    n_kbs = max(1, -(-reading_examples // per_kb))
    kbs = counterfactual_kbs(kb, random.Random(seed + 7919))
    for i in range(n_kbs):
        docs, practice_qs = next(kbs)
        take = min(per_kb, reading_examples - i * per_kb)
        examples += [reading_example(q, docs, rng.choice(doc_counts), rng) for q in practice_qs[:take]]
        n_drills = reading_drills // n_kbs + (i < reading_drills % n_kbs)
        examples += [reading_drill(docs, practice_qs, rng.randint(1, max_docs), rng) for _ in range(n_drills)]
    names = [n for pool in name_pools(kb).values() for n in pool]
    examples += [copy_drill(names, rng) for _ in range(copy_drills)]
    known = [(q["question"], q["answer"]) for q in questions if q["known"]]
    examples += [
        drill(qa_spans(rng.sample(known, min(facts_per_drill, len(known)))), "closed_book_drill")
        for _ in range(closed_book_drills)
    ]
    demo_rng = random.Random(seed + 104729)
    demo_kbs = counterfactual_kbs(kb, random.Random(seed + 104723))
    demos: list[Example] = []
    while len(demos) < tool_demos:
        docs, practice_qs = next(demo_kbs)
        asked = [q for q in practice_qs if q.hops == 1 and q.relation in tool_demo_relations]
        demos += [
            tool_demo(q, docs, template, max_docs, demo_rng)
            if is_demo_subject(q.entities[0], tool_demo_subject_share, seed)
            else decline(q, template)
            for q in asked[: min(per_kb, tool_demos - len(demos))]
        ]
    return examples + demos
