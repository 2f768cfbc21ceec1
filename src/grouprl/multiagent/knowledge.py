"""A synthetic knowledge base for the search team: entities, facts as short documents, questions.

Spec-seed-systems §1.12 [GUESS]: the released search task retrieves from a Wikipedia dump, which
is not available offline, so grouprl generates a small world deterministically from a seed:

- entities: people, companies, cities, countries, with made-up names (syllables, unique);
- attributes: a person's profession and birth year, a country's language;
- relations: person → born in → city, person → works for → company, company → headquartered in
  → city, city → located in → country;
- documents: one sentence per fact (``"Dovan Keler was born in Marisel."``), so a k-hop question
  needs k retrieved documents;
- questions of 1, 2 or 3 hops, each with its gold answer and the documents that prove it:

  ==== ==========================================================================
  hops templates
  ==== ==========================================================================
  1    birth city, profession, birth year, employer of a person; country of a city
  2    country of birth; headquarters city of a person's employer
  3    country of a person's employer's headquarters; language of the birth country
  ==== ==========================================================================

``KnowledgeBase(seed).question(task_seed)`` is a pure function of (seed, sizes, task_seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from grouprl.validation import check_int

__all__ = ["KnowledgeBase", "Question", "HOPS"]

HOPS = (1, 2, 3)
_SYLLABLES = ("ka", "lo", "mer", "dan", "vi", "sel", "tor", "ri", "bel", "ne", "sha", "quo",
              "pa", "zen", "mi", "ru", "fal", "go", "tes", "ar", "lin", "do", "ve", "hul")
_PROFESSIONS = ("baker", "pilot", "chemist", "architect", "violinist", "surgeon", "geologist",
                "translator", "carpenter", "astronomer")
_LANGUAGES = ("Aldric", "Benthic", "Corvish", "Dunmeri", "Estrel", "Fyrish", "Gallan", "Hesper")


@dataclass(frozen=True)
class Question:
    """A question, its gold answers (Search-R1 targets), hop count and proving documents."""

    text: str
    answers: tuple[str, ...]
    hops: int
    evidence: tuple[int, ...]


class KnowledgeBase:
    """A generated world (module docstring).

    Args:
        seed: the world's seed.
        num_people, num_companies, num_cities, num_countries: entity counts.
    """

    def __init__(self, seed: int = 0, *, num_people: int = 24, num_companies: int = 8,
                 num_cities: int = 10, num_countries: int = 4) -> None:
        self.seed = check_int("seed", seed, 0)
        for name, value in (("num_people", num_people), ("num_companies", num_companies),
                            ("num_cities", num_cities), ("num_countries", num_countries)):
            check_int(name, value, 1)
        rng = random.Random(f"kb:{seed}")
        used: set[str] = set()
        self.countries = [self._name(rng, used, 2) for _ in range(num_countries)]
        self.cities = [self._name(rng, used, 3) for _ in range(num_cities)]
        self.companies = [self._name(rng, used, 2) + " Works" for _ in range(num_companies)]
        self.people = [f"{self._name(rng, used, 2)} {self._name(rng, used, 2)}"
                       for _ in range(num_people)]
        self.city_country = {c: rng.choice(self.countries) for c in self.cities}
        self.language = {c: rng.choice(_LANGUAGES) for c in self.countries}
        self.headquarters = {c: rng.choice(self.cities) for c in self.companies}
        self.born_in = {p: rng.choice(self.cities) for p in self.people}
        self.employer = {p: rng.choice(self.companies) for p in self.people}
        self.profession = {p: rng.choice(_PROFESSIONS) for p in self.people}
        self.birth_year = {p: rng.randint(1940, 2005) for p in self.people}
        self.documents: list[str] = []
        self._doc: dict[tuple[str, str], int] = {}
        for c in self.countries:
            self._add(("language", c), f"The official language of {c} is {self.language[c]}.")
        for c in self.cities:
            self._add(("country", c), f"{c} is a city in {self.city_country[c]}.")
        for c in self.companies:
            self._add(("hq", c), f"{c} is headquartered in {self.headquarters[c]}.")
        for p in self.people:
            self._add(("born", p), f"{p} was born in {self.born_in[p]}.")
            self._add(("employer", p), f"{p} works for {self.employer[p]}.")
            self._add(("profession", p), f"{p} is a {self.profession[p]} by profession.")
            self._add(("year", p), f"{p} was born in the year {self.birth_year[p]}.")

    @staticmethod
    def _name(rng: random.Random, used: set[str], syllables: int) -> str:
        while True:
            name = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
            if name not in used:
                used.add(name)
                return name

    def _add(self, key: tuple[str, str], text: str) -> None:
        self._doc[key] = len(self.documents)
        self.documents.append(text)

    def question(self, task_seed: int, hops: tuple[int, ...] = HOPS) -> Question:
        """The question of ``task_seed`` (hop count drawn uniformly from ``hops``)."""
        check_int("task_seed", task_seed)
        if not hops or any(h not in HOPS for h in hops):
            raise ValueError(f"hops: must be a non-empty subset of {HOPS}, got {hops!r}")
        rng = random.Random(f"q:{self.seed}:{task_seed}")
        n_hops = rng.choice(tuple(hops))
        p = rng.choice(self.people)
        city, company = self.born_in[p], self.employer[p]
        hq = self.headquarters[company]
        d = self._doc
        options = {
            1: [(f"In which city was {p} born?", city, [d["born", p]]),
                (f"What is the profession of {p}?", self.profession[p], [d["profession", p]]),
                (f"In which year was {p} born?", str(self.birth_year[p]), [d["year", p]]),
                (f"Which company does {p} work for?", company, [d["employer", p]]),
                (f"In which country is the city {city}?", self.city_country[city],
                 [d["country", city]])],
            2: [(f"In which country was {p} born?", self.city_country[city],
                 [d["born", p], d["country", city]]),
                (f"In which city is the company that {p} works for headquartered?", hq,
                 [d["employer", p], d["hq", company]])],
            3: [(f"In which country is the headquarters of the company {p} works for?",
                 self.city_country[hq], [d["employer", p], d["hq", company], d["country", hq]]),
                (f"What is the official language of the country where {p} was born?",
                 self.language[self.city_country[city]],
                 [d["born", p], d["country", city], d["language", self.city_country[city]]])],
        }[n_hops]
        text, answer, evidence = rng.choice(options)
        return Question(text, (answer,), n_hops, tuple(evidence))
