"""Questions over the knowledge base: single-hop (one passage) and two-hop (two distinct passages).

Each question records the doc ids that support it, the entities it involves and its hop count, so
tests can check every answer is derivable from the corpus and evaluation can split results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from search_r1.world.kb import Entity, KnowledgeBase

# How a single-hop question about ``{}`` is worded, by relation. Two-hop questions are worded on
# their own; the oracle teacher restates each hop with these (``sft/oracle.py``).
SINGLE_HOP = {
    "capital": "What is the capital of {}?",
    "country": "In which country is {}?",
    "river": "Which river flows through {}?",
    "founded": "In what year was {} founded?",
    "birthplace": "Where was {} born?",
    "born": "In what year was {} born?",
    "occupation": "What was the occupation of {}?",
    "founder": "Who founded the {}?",
    "headquarters": "Where is the {} headquartered?",
}


@dataclass
class WorldQuestion:
    question: str
    answer: str
    subject: str  # the entity that decides the split
    hops: int
    support: list[str]  # doc ids, in the order a searcher needs them
    entities: list[str]  # every entity whose fact is used
    relation: str
    queries: list[str] = field(default_factory=list)  # ideal search queries, one per hop


def _q(
    answer: str, subject: Entity, relation: str, chain: list[Entity], question: str | None = None
) -> WorldQuestion:
    """A question about ``subject``; single-hop ones are worded by ``SINGLE_HOP[relation]``."""
    return WorldQuestion(
        question=question or SINGLE_HOP[relation].format(subject.name),
        answer=answer,
        subject=subject.name,
        hops=len(chain),
        support=[e.doc_id for e in chain],
        entities=[e.name for e in chain],
        relation=relation,
        queries=[e.name for e in chain],
    )


def generate_questions(kb: KnowledgeBase) -> list[WorldQuestion]:
    """All questions the world supports, in a deterministic order."""
    names = kb.by_name()
    qs: list[WorldQuestion] = []
    for c in kb.countries:
        capital = names[c.attrs["capital"]]
        qs.append(_q(capital.name, c, "capital", [c]))
        qs.append(
            _q(
                capital.attrs["river"],
                c,
                "capital.river",
                [c, capital],
                f"Which river flows through the capital of {c.name}?",
            )
        )
    for city in kb.cities:
        qs.append(_q(city.attrs["country"], city, "country", [city]))
        qs.append(_q(city.attrs["river"], city, "river", [city]))
        qs.append(_q(city.attrs["founded"], city, "founded", [city]))
    for p in kb.people:
        birthplace = names[p.attrs["birthplace"]]
        qs.append(_q(birthplace.name, p, "birthplace", [p]))
        qs.append(_q(p.attrs["born"], p, "born", [p]))
        qs.append(_q(p.attrs["occupation"], p, "occupation", [p]))
        qs.append(
            _q(
                birthplace.attrs["country"],
                p,
                "birthplace.country",
                [p, birthplace],
                f"In which country was {p.name} born?",
            )
        )
    for co in kb.companies:
        founder = names[co.attrs["founder"]]
        hq = names[co.attrs["headquarters"]]
        qs.append(_q(founder.name, co, "founder", [co]))
        qs.append(_q(hq.name, co, "headquarters", [co]))
        qs.append(
            _q(
                founder.attrs["birthplace"],
                co,
                "founder.birthplace",
                [co, founder],
                f"Where was the founder of the {co.name} born?",
            )
        )
        qs.append(
            _q(
                hq.attrs["country"],
                co,
                "headquarters.country",
                [co, hq],
                f"In which country is the {co.name} headquartered?",
            )
        )
    return qs
