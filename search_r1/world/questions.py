"""Questions over the knowledge base: single-hop (one passage) and two-hop (two distinct passages).

Each question records the doc ids that support it, the entities it involves and its hop count, so
tests can check every answer is derivable from the corpus and evaluation can split results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from search_r1.world.kb import Entity, KnowledgeBase


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


def _q(question: str, answer: str, subject: Entity, relation: str, chain: list[Entity]) -> WorldQuestion:
    return WorldQuestion(
        question=question,
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
        qs.append(_q(f"What is the capital of {c.name}?", capital.name, c, "capital", [c]))
        qs.append(
            _q(
                f"Which river flows through the capital of {c.name}?",
                capital.attrs["river"],
                c,
                "capital.river",
                [c, capital],
            )
        )
    for city in kb.cities:
        qs.append(_q(f"In which country is {city.name}?", city.attrs["country"], city, "country", [city]))
        qs.append(_q(f"Which river flows through {city.name}?", city.attrs["river"], city, "river", [city]))
        qs.append(
            _q(f"In what year was {city.name} founded?", city.attrs["founded"], city, "founded", [city])
        )
    for p in kb.people:
        birthplace = names[p.attrs["birthplace"]]
        qs.append(_q(f"Where was {p.name} born?", birthplace.name, p, "birthplace", [p]))
        qs.append(_q(f"In what year was {p.name} born?", p.attrs["born"], p, "born", [p]))
        qs.append(_q(f"What was the occupation of {p.name}?", p.attrs["occupation"], p, "occupation", [p]))
        qs.append(
            _q(
                f"In which country was {p.name} born?",
                birthplace.attrs["country"],
                p,
                "birthplace.country",
                [p, birthplace],
            )
        )
    for co in kb.companies:
        founder = names[co.attrs["founder"]]
        hq = names[co.attrs["headquarters"]]
        qs.append(_q(f"Who founded the {co.name}?", founder.name, co, "founder", [co]))
        qs.append(_q(f"Where is the {co.name} headquartered?", hq.name, co, "headquarters", [co]))
        qs.append(
            _q(
                f"Where was the founder of the {co.name} born?",
                founder.attrs["birthplace"],
                co,
                "founder.birthplace",
                [co, founder],
            )
        )
        qs.append(
            _q(
                f"In which country is the {co.name} headquartered?",
                hq.attrs["country"],
                co,
                "headquarters.country",
                [co, hq],
            )
        )
    return qs
