"""Synthetic preferences from heterogeneous users: groups who want short or detailed, formal or casual answers.

Every user belongs to one known group (``short-formal``, ``short-casual``, ``detailed-formal``,
``detailed-casual``). A pair answers one prompt twice; the two answers differ on exactly one *axis*, length
(a one-sentence answer vs the same answer with two or three sentences of explanation) or tone (formal vs
casual wording, openers and closers), and agree on the other. The user prefers the answer matching their
group on that axis, so every label is determined by the group (optionally flipped with probability
``noise``). Users of opposite groups label the same pair in opposite ways, so no single reward model can fit
all of them: one Bradley-Terry model is at chance on a balanced population, while a per-user model (PAL,
:mod:`alignkit.rewards.pal`) can be right on every pair.

Each pair is a :class:`~alignkit.data.records.PreferencePair` whose metadata holds ``user_id``, ``group`` and
``axis``; written with :func:`alignkit.data.synthetic.write_jsonl` these become top-level columns, which
``load_records`` reads back into metadata. The texts are ours, written for this generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from alignkit.data.records import PreferencePair

GROUPS = ("short-formal", "short-casual", "detailed-formal", "detailed-casual")
AXES = ("length", "tone")


@dataclass(frozen=True)
class Topic:
    question: str
    answer: str  # one neutral sentence
    details: tuple[str, ...]  # neutral sentences of explanation


TOPICS = (
    Topic("How do I keep a houseplant healthy?", "Water it when the top of the soil is dry and give it bright, "
          "indirect light.", ("Most houseplants die from too much water rather than too little.",
                              "A pot with a drainage hole keeps the roots from rotting.",
                              "Turning the pot every week helps the plant grow evenly.")),
    Topic("How can I fall asleep faster?", "Go to bed at the same time every night and keep screens out of "
          "the bedroom.", ("Bright light in the evening delays the body's sleep signal.",
                           "A cool, dark room makes it easier to drift off.",
                           "Caffeine after lunch can keep you awake hours later.")),
    Topic("What is a good way to learn a new language?", "Practise a little every day and speak with native "
          "speakers as early as you can.", ("Short daily sessions beat long weekly ones for memory.",
                                            "Spaced repetition apps help vocabulary stick.",
                                            "Listening to podcasts trains your ear for natural speech.")),
    Topic("How do I make good coffee at home?", "Use freshly ground beans and water just below boiling.",
          ("A ratio of about one gram of coffee to sixteen grams of water is a solid start.",
           "Grinding right before brewing keeps the aroma.", "Clean equipment avoids bitter, stale flavours.")),
    Topic("How should I prepare for a job interview?", "Research the company and practise answering common "
          "questions out loud.", ("Prepare two or three stories that show your skills in action.",
                                  "Have a few questions ready to ask the interviewer.",
                                  "Plan your route so you arrive ten minutes early.")),
    Topic("How do I start running?", "Begin with short runs mixed with walking, three times a week.",
          ("Increase your distance by no more than ten percent a week.",
           "Comfortable shoes matter more than expensive gear.", "Rest days let your muscles recover and grow.")),
    Topic("How can I save money each month?", "Track your spending and set aside a fixed amount as soon as you "
          "are paid.", ("Automatic transfers remove the temptation to spend first.",
                        "Cancelling unused subscriptions is an easy early win.",
                        "Cooking at home is usually much cheaper than eating out.")),
    Topic("How do I remove a coffee stain from a shirt?", "Rinse it with cold water from the back and dab it "
          "with a little dish soap.", ("Hot water can set the stain into the fabric.",
                                       "Rubbing spreads the stain, so blot it instead.",
                                       "Wash the shirt as usual once the stain has faded.")),
    Topic("What should I pack for a weekend hike?", "Bring water, snacks, a rain layer and a map of the trail.",
          ("Weather in the hills can change quickly, even in summer.",
           "A small first-aid kit handles blisters and scrapes.",
           "Tell someone your route and when you expect to be back.")),
    Topic("How do I write a clear email?", "Put the main point in the first sentence and keep paragraphs short.",
          ("A specific subject line helps the reader find the message later.",
           "End with the action you need and a deadline.", "Reading it once out loud catches awkward phrasing.")),
    Topic("How can I focus better while studying?", "Work in blocks of about twenty-five minutes with short "
          "breaks in between.", ("Silencing your phone removes the biggest distraction.",
                                 "Writing down a goal for each block keeps you on track.",
                                 "A tidy desk makes it easier to start.")),
    Topic("How do I cook rice on the stove?", "Simmer one cup of rinsed rice in two cups of water, covered, for "
          "about fifteen minutes.", ("Rinsing removes surface starch so the grains do not clump.",
                                     "Letting it rest off the heat for five minutes finishes the cooking.",
                                     "Fluff it with a fork before serving.")),
    Topic("How do I back up my photos?", "Keep one copy on an external drive and another in cloud storage.",
          ("Two copies in different places protect against theft, fire and failure.",
           "Automatic backups are the ones that actually happen.",
           "Check now and then that you can restore a file.")),
    Topic("How can I be more productive in the morning?", "Plan the day the evening before and start with your "
          "hardest task.", ("Decisions are easier when you are not yet tired.",
                            "A short walk or stretch wakes the body up.",
                            "Leaving email until later protects your best hours.")),
    Topic("How do I look after a cast-iron pan?", "Dry it straight after washing and rub in a thin layer of oil.",
          ("Moisture left on the surface causes rust.", "Soaking the pan overnight strips its seasoning.",
           "Cooking with fat regularly builds a natural non-stick layer.")),
    Topic("How do I choose a good password?", "Use a long passphrase of several random words and never reuse it.",
          ("Length makes a password harder to guess than symbols do.",
           "A password manager remembers unique passwords for every site.",
           "Turning on two-factor login adds a second lock.")),
)

FORMAL_OPENERS = ("Certainly.", "Thank you for your question.", "Here is my recommendation.",
                   "That is an excellent question.", "I would be pleased to help.")
_FORMAL_CLOSERS = ("I hope this information proves helpful.", "Please let me know if further detail is required.",
                   "I trust this answers your question.", "Kind regards.")
_CASUAL_OPENERS = ("Hey!", "Oh, easy one!", "Sure thing!", "Haha okay so,", "Yo!")
_CASUAL_CLOSERS = ("Hope that helps!! :)", "You got this!", "Good luck, have fun!", "Cheers!!", "Easy peasy lol.")
_CONTRACTIONS = (("do not", "don't"), ("does not", "doesn't"), ("it is", "it's"), ("you are", "you're"),
                 ("you can", "ya can"), ("going to", "gonna"), ("a little", "a lil"), ("about", "like"),
                 ("before", "b4"))


def _casual(sentence: str) -> str:
    for formal, casual in _CONTRACTIONS:
        sentence = sentence.replace(formal, casual)
    return sentence[0].lower() + sentence[1:]


def render(topic: Topic, detailed: bool, formal: bool, rng: random.Random) -> str:
    """One answer to ``topic`` in the given style: the answer, plus 2-3 detail sentences when ``detailed``,
    wrapped in a formal or casual opener and closer, casual answers with casual wording."""
    sentences = [topic.answer]
    if detailed:
        sentences += rng.sample(topic.details, rng.choice((2, 3)))
    if formal:
        return " ".join([rng.choice(FORMAL_OPENERS), *sentences, rng.choice(_FORMAL_CLOSERS)])
    return " ".join([rng.choice(_CASUAL_OPENERS), *(_casual(s) for s in sentences), rng.choice(_CASUAL_CLOSERS)])


def prefers(group: str, axis: str) -> bool:
    """The value of ``axis`` that ``group`` prefers: True = detailed (length) or formal (tone)."""
    length, tone = group.split("-")
    return length == "detailed" if axis == "length" else tone == "formal"


def make_pair(topic: Topic, group: str, axis: str, rng: random.Random, noise: float = 0.0) -> tuple[str, str]:
    """(chosen, rejected) for a user of ``group`` on a pair that differs on ``axis`` only."""
    other = rng.random() < 0.5  # the shared value of the axis that does not vary
    sides = {}
    for value in (True, False):
        detailed, formal = (value, other) if axis == "length" else (other, value)
        sides[value] = render(topic, detailed, formal, rng)
    liked = prefers(group, axis) != (rng.random() < noise)
    return sides[liked], sides[not liked]


def make_users(n_users: int, pairs_per_user: int, seed: int = 0, groups: tuple[str, ...] = GROUPS,
               noise: float = 0.0, prefix: str = "user") -> list[PreferencePair]:
    """``pairs_per_user`` pairs for each of ``n_users`` users, user i in group ``groups[i % len(groups)]``;
    user ids are ``{prefix}{i:03d}``. Deterministic in ``seed`` and ``prefix``."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"unknown groups {unknown}; choose from {list(GROUPS)}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise is a flip probability in [0, 0.5], got {noise}")
    pairs = []
    for i in range(n_users):
        user, group = f"{prefix}{i:03d}", groups[i % len(groups)]
        rng = random.Random(f"alignkit-heterogeneous/{seed}/{user}")
        for _ in range(pairs_per_user):
            topic, axis = rng.choice(TOPICS), rng.choice(AXES)
            chosen, rejected = make_pair(topic, group, axis, rng, noise)
            pairs.append(PreferencePair(prompt=topic.question, chosen=chosen, rejected=rejected,
                                        metadata={"user_id": user, "group": group, "axis": axis}))
    return pairs


def make_heterogeneous(users: int = 40, new_users: int = 20, train_pairs: int = 40, test_pairs: int = 20,
                       new_user_pairs: int = 40, seed: int = 0, groups: tuple[str, ...] = GROUPS,
                       noise: float = 0.0) -> dict[str, list[PreferencePair]]:
    """Three splits: ``train`` (``train_pairs`` per seen user), ``test`` (``test_pairs`` more per seen user)
    and ``new_users`` (``new_user_pairs`` each for users never seen in training, ids ``new000``...)."""
    seen = make_users(users, train_pairs + test_pairs, seed, groups, noise)
    per_user = train_pairs + test_pairs
    train = [p for i, p in enumerate(seen) if i % per_user < train_pairs]
    test = [p for i, p in enumerate(seen) if i % per_user >= train_pairs]
    return {"train": train, "test": test,
            "new_users": make_users(new_users, new_user_pairs, seed, groups, noise, prefix="new")}


__all__ = ["AXES", "FORMAL_OPENERS", "GROUPS", "TOPICS", "Topic", "make_heterogeneous", "make_pair", "make_users",
           "prefers", "render"]
