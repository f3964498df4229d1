"""Facts shared by the synthetic format and concise families, and the text helpers their verifiers use.

Each fact has a one-or-two-word answer and a natural full sentence, which is what an untrained chat model
tends to reply with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def words(text: str) -> list[str]:
    return text.split()


def normalize(text: str) -> str:
    # Models emit typographic apostrophes; verifiers compare against ASCII ones.
    return text.replace("\u2019", "'").replace("\u2018", "'").strip()


@dataclass(frozen=True)
class Fact:
    question: str  # lower-case start, ends with "?", so it can follow an instruction prefix
    answer: str
    sentence: str
    aliases: tuple[str, ...] = ()

    @property
    def accepted(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)


def _build_facts() -> list[Fact]:
    facts: list[Fact] = []
    capitals = {
        "France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid",
        "England": "London", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa",
        "China": "Beijing", "Portugal": "Lisbon", "Ireland": "Dublin", "Norway": "Oslo",
        "Sweden": "Stockholm",
        "Austria": "Vienna", "Poland": "Warsaw", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana",
        "Thailand": "Bangkok", "Turkey": "Ankara", "Finland": "Helsinki", "Denmark": "Copenhagen",
        "Hungary": "Budapest", "Argentina": "Buenos Aires", "India": "New Delhi", "Australia": "Canberra",
        "Mexico": "Mexico City", "Belgium": "Brussels",
    }
    for country, city in capitals.items():
        facts.append(Fact(f"what is the capital of {country}?", city, f"The capital of {country} is {city}."))
    opposites = {
        "hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
        "open": "closed", "early": "late", "full": "empty", "hard": "soft", "high": "low", "old": "new",
        "wet": "dry", "rich": "poor", "strong": "weak", "loud": "quiet", "thick": "thin", "win": "lose",
        "day": "night", "push": "pull",
    }
    for word, opposite in opposites.items():
        aliases = ("young",) if word == "old" else ()
        facts.append(Fact(f"what is the opposite of {word}?", opposite,
                          f"The opposite of {word} is {opposite}.", aliases))
    colors = {
        "the sky on a clear day": "blue", "fresh grass": "green", "fresh snow": "white", "coal": "black",
        "a ripe banana": "yellow", "a ripe tomato": "red", "milk": "white", "a lemon": "yellow",
        "a strawberry": "red", "chocolate": "brown", "a carrot": "orange", "a lime": "green",
        "a polar bear's fur": "white", "a crow": "black", "a pumpkin": "orange",
    }
    for thing, color in colors.items():
        facts.append(Fact(f"what color is {thing}?", color, f"{thing[0].upper()}{thing[1:]} is {color}."))
    babies = {
        "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal", "frog": "tadpole",
        "bear": "cub", "duck": "duckling", "kangaroo": "joey", "pig": "piglet", "deer": "fawn",
        "swan": "cygnet", "goose": "gosling", "owl": "owlet",
    }
    for animal, baby in babies.items():
        facts.append(Fact(f"what is a baby {animal} called?", baby, f"A baby {animal} is called a {baby}."))
    plurals = {
        "mouse": "mice", "child": "children", "goose": "geese", "foot": "feet", "tooth": "teeth",
        "man": "men", "woman": "women", "person": "people", "ox": "oxen", "cactus": "cacti",
        "leaf": "leaves", "knife": "knives",
    }
    for word, plural in plurals.items():
        facts.append(Fact(f"what is the plural of {word}?", plural, f"The plural of {word} is {plural}."))
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    for i, day in enumerate(days):
        nxt = days[(i + 1) % 7]
        facts.append(Fact(f"what day comes after {day}?", nxt, f"The day after {day} is {nxt}."))
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"]
    for i, month in enumerate(months):
        nxt = months[(i + 1) % 12]
        facts.append(Fact(f"what month comes after {month}?", nxt, f"The month after {month} is {nxt}."))
    languages = {
        "Brazil": "Portuguese", "Mexico": "Spanish", "Germany": "German", "France": "French",
        "Japan": "Japanese", "Italy": "Italian", "Russia": "Russian", "Egypt": "Arabic",
        "the Netherlands": "Dutch", "Greece": "Greek", "Poland": "Polish", "Turkey": "Turkish",
        "Sweden": "Swedish", "Korea": "Korean",
    }
    for country, language in languages.items():
        facts.append(Fact(f"what language is mainly spoken in {country}?", language,
                          f"The main language spoken in {country} is {language}."))
    legs = {"a spider": ("eight", "8"), "an insect": ("six", "6"), "a dog": ("four", "4"),
            "a bird": ("two", "2"), "a horse": ("four", "4"), "an ant": ("six", "6")}
    for animal, (word, digit) in legs.items():
        facts.append(Fact(f"how many legs does {animal} have?", word,
                          f"{animal[0].upper()}{animal[1:]} has {word} legs.", (digit,)))
    return facts


FACTS: list[Fact] = _build_facts()
ONE_WORD_FACTS = [f for f in FACTS if len(f.answer.split()) == 1]
_FACT_BY_QUESTION: dict[str, Fact] = {f.question.lower(): f for f in FACTS}


def lookup_fact(question: str) -> Fact | None:
    return _FACT_BY_QUESTION.get(question.strip().lower())


def contains_answer(response: str, fact: Fact) -> bool:
    text = normalize(response).lower()
    return any(re.search(rf"\b{re.escape(a.lower())}\b", text) for a in fact.accepted)

