"""The prompts every stage renders: one home, so data builders, teachers, RL and eval agree.

A dataset row stores the rendered chat ``messages`` (verl schema, DESIGN §3); the same function
renders them at evaluation time, so a template change is a data rebuild, never a silent drift.
"""

from __future__ import annotations

# Search-R1's instruction (the paper's default), kept verbatim including its typo so that results
# stay comparable with published numbers.
SEARCH_R1 = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every "
    "time you get new information. After reasoning, if you find you lack some knowledge, you can call "
    "a search engine by <search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. If you find no "
    "further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

# A shorter instruction with the same protocol for the embedded world's tiny model, whose context
# and compute budget are small: the instruction is a constant prefix of every training example.
COMPACT = (
    "Answer the question. Think inside <think> </think>. To look something up, write "
    "<search> query </search>; results come back inside <information> </information>. "
    "Give the final answer inside <answer> </answer>.\nQuestion: {question}"
)

# Closed-book and retrieve-once baselines for evaluation (modes `direct` and `rag`).
DIRECT = "Answer the question. Give the final answer inside <answer> </answer>.\nQuestion: {question}"
RAG = (
    "Answer the question using the passages. Give the final answer inside <answer> </answer>.\n"
    "{information}\nQuestion: {question}"
)

TEMPLATES: dict[str, str] = {"search_r1": SEARCH_R1, "compact": COMPACT, "direct": DIRECT, "rag": RAG}


def render_prompt(question: str, template: str = "search_r1", **fields: str) -> list[dict[str, str]]:
    """Chat messages for one question: a single user turn (the model's chat template adds the rest)."""
    try:
        text = TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; choose from {sorted(TEMPLATES)}") from None
    question = question.strip()
    if question and question[-1] not in "?.!":
        question += "?"
    return [{"role": "user", "content": text.format(question=question, **fields)}]
