"""A knowledge base of fictional entities, so a small model cannot know the facts without searching.

Entities are countries, cities, people and companies with a few attributes each; every entity gets
one encyclopedia-style passage. A passage states only its own entity's attributes, so a two-hop
question ("In which country was X born?") needs two distinct passages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "z",
    "h",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk"]
RIVERS_SUFFIX = "River"
OCCUPATIONS = [
    "painter",
    "poet",
    "chemist",
    "architect",
    "composer",
    "astronomer",
    "sculptor",
    "engineer",
    "botanist",
    "historian",
    "cartographer",
    "physician",
    "novelist",
    "mathematician",
    "weaver",
]
INDUSTRIES = [
    "shipbuilding",
    "textiles",
    "glassmaking",
    "printing",
    "brewing",
    "mining",
    "clockmaking",
    "tea trading",
]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(lo, hi))).capitalize()


class NameBank:
    """Unique pronounceable names; never reuses a name across entity kinds."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def new(self, lo: int = 2, hi: int = 3, kind: str = "") -> str:
        while True:
            name = _word(self.rng, lo, hi)
            if name not in self.used and 4 <= len(name) <= 12:
                self.used.add(name)
                return name


class RecastNames:
    """Draws existing names by kind instead of inventing them: ``generate_kb(..., names=RecastNames(...))``
    gives a *counterfactual* knowledge base, the same names with different facts.

    The tiny model's reading practice uses it, so the name tokens it learns to copy are the ones the
    real corpus uses, while no fact it reads there is true of the real world."""

    def __init__(self, pools: dict[str, list[str]], rng: random.Random):
        self.pools = {kind: rng.sample(names, len(names)) for kind, names in pools.items()}

    def new(self, lo: int = 2, hi: int = 3, kind: str = "") -> str:
        if not self.pools.get(kind):
            raise ValueError(f"no {kind!r} names left to recast")
        return self.pools[kind].pop()


@dataclass
class Entity:
    kind: str  # country | city | person | company
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    passage: str = ""

    @property
    def doc_id(self) -> str:
        return f"kb-{self.kind}-{self.name.lower().replace(' ', '-')}"


@dataclass
class KnowledgeBase:
    countries: list[Entity]
    cities: list[Entity]
    people: list[Entity]
    companies: list[Entity]

    @property
    def entities(self) -> list[Entity]:
        return self.countries + self.cities + self.people + self.companies

    def by_name(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}


def generate_kb(
    rng: random.Random,
    n_countries: int,
    n_cities: int,
    n_people: int,
    n_companies: int,
    names: NameBank | RecastNames | None = None,
) -> KnowledgeBase:
    names = names or NameBank(rng)
    countries = [Entity("country", names.new(2, 3, "country")) for _ in range(n_countries)]
    cities = []
    for i in range(n_cities):
        country = countries[i % n_countries]  # every country gets at least one city
        city = Entity(
            "city",
            names.new(2, 3, "city"),
            {
                "country": country.name,
                "river": f"{names.new(2, 2, 'river')} {RIVERS_SUFFIX}",
                "founded": str(rng.randint(900, 1750)),
            },
        )
        cities.append(city)
    for i, country in enumerate(countries):
        country.attrs["capital"] = cities[i].name
    people = []
    for _ in range(n_people):
        first, last = names.new(2, 2, "first"), names.new(2, 3, "last")
        people.append(
            Entity(
                "person",
                f"{first} {last}",
                {
                    "birthplace": rng.choice(cities).name,
                    "born": str(rng.randint(1780, 1960)),
                    "occupation": rng.choice(OCCUPATIONS),
                },
            )
        )
    companies = []
    for _ in range(n_companies):
        founder = rng.choice(people)
        companies.append(
            Entity(
                "company",
                f"{names.new(2, 3, 'company')} {rng.choice(['Works', 'Company', 'Guild', 'Foundry', 'House'])}",
                {
                    "founder": founder.name,
                    "headquarters": rng.choice(cities).name,
                    "industry": rng.choice(INDUSTRIES),
                    "founded": str(int(founder.attrs["born"]) + rng.randint(22, 50)),
                },
            )
        )
    kb = KnowledgeBase(countries, cities, people, companies)
    for e in kb.entities:
        e.passage = write_passage(e, rng)
    return kb


def write_passage(e: Entity, rng: random.Random) -> str:
    """Encyclopedia-style text naming only ``e``'s own attributes (two-hop needs two passages)."""
    a = e.attrs
    if e.kind == "country":
        return rng.choice(
            [
                f"{e.name} is a small country on the northern coast. The capital of {e.name} is {a['capital']}. "
                f"Its people are known for their long winters and old harbours.",
                f"{e.name} is a country of hills and lakes. Its capital city is {a['capital']}, "
                f"the largest market town of the region.",
            ]
        )
    if e.kind == "city":
        return rng.choice(
            [
                f"{e.name} is a city in {a['country']}. It was founded in {a['founded']}. "
                f"The {a['river']} flows through {e.name}, and its old bridge is a well known landmark.",
                f"{e.name} is a town in {a['country']}, founded in {a['founded']} on the banks of the {a['river']}. "
                f"It is famous for its markets and its stone towers.",
            ]
        )
    if e.kind == "person":
        last = e.name.split()[-1]
        return rng.choice(
            [
                f"{e.name} (born {a['born']}) is a {a['occupation']}. {last} was born in {a['birthplace']} "
                f"and became known for a long career as a {a['occupation']}.",
                f"{e.name} is a {a['occupation']} born in {a['born']} in the city of {a['birthplace']}. "
                f"{last} worked for many years before becoming widely known.",
            ]
        )
    return rng.choice(
        [
            f"The {e.name} is a {a['industry']} company founded in {a['founded']} by {a['founder']}. "
            f"It is headquartered in {a['headquarters']}.",
            f"The {e.name} was founded by {a['founder']} in {a['founded']}. The company works in {a['industry']} "
            f"and has its headquarters in {a['headquarters']}.",
        ]
    )


def name_pools(kb: dict) -> dict[str, list[str]]:
    """The world's names by kind, famous entities left out so their memorised facts stay unambiguous."""
    famous = set(kb["famous"])
    pools: dict[str, set[str]] = {k: set() for k in ("country", "city", "river", "first", "last", "company")}
    for e in kb["entities"]:
        if e["kind"] == "city":
            pools["river"].add(e["attrs"]["river"].removesuffix(f" {RIVERS_SUFFIX}"))
        if e["name"] in famous:
            continue
        if e["kind"] == "person":
            first, last = e["name"].split(" ", 1)
            pools["first"].add(first)
            pools["last"].add(last)
        elif e["kind"] == "company":
            pools["company"].add(e["name"].rsplit(" ", 1)[0])
        else:
            pools[e["kind"]].add(e["name"])
    return {k: sorted(v) for k, v in pools.items()}


def recast_kb(pools: dict[str, list[str]], rng: random.Random) -> KnowledgeBase:
    """A counterfactual knowledge base: every name of ``pools`` (``name_pools``) recast with freshly
    drawn facts. Used for the tiny model's reading practice and for SFT's practice worlds."""
    sizes = (
        len(pools["country"]),
        len(pools["city"]),
        min(len(pools["first"]), len(pools["last"])),
        len(pools["company"]),
    )
    return generate_kb(rng, *sizes, names=RecastNames(pools, rng))
