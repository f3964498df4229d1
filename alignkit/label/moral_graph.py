"""Moral Graph Elicitation (Klingefjord, Lowe, Edelman, "What are human values, and how do we align AI to
them?", 2024, arXiv 2404.10636): scenario, storage of what participants say, and the aggregation.

* A **values card** is a ``title``, an optional ``description`` and its **attentional policies**: what a
  person attends to when choosing well in a context ("CHANCES for the user to ..."), not instrumental goals.
* A **context** is the choice situation ("when the user is in distress"); values are judged within one.
* An **edge** ``from -> to`` in context c, shown with a transition story, means "``to`` is wiser than
  ``from``": participants vote yes / no / not sure. An edge is kept when yes votes outnumber no votes.
* The **moral graph** of a context has the cards as nodes and the kept edges, weighted by agreement
  (yes votes / all votes on the edge). PageRank over it ranks the values; the top ones are what the model
  should attend to in that context.

Reconstruction notes: the paper names PageRank "or a similar link-analysis method" and weights from vote
counts without fixing the formula; the weight (share of yes votes), the majority rule for keeping an edge and
the damping 0.85 are ours. Transition stories come from the scenario file (written by the operator, or by a
model beforehand); the server itself runs no model.

Participants' answers are appended (fsynced) to ``DIR/answers.jsonl`` (context choice, legitimacy answers),
``DIR/cards.jsonl`` and ``DIR/votes.jsonl``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from alignkit.configs import ConfigError, StrictModel, one_line, read_yaml_mapping
from alignkit.io import read_jsonl
from alignkit.label.store import drop_torn_tail

VOTES = ("yes", "no", "unsure")
DEFAULT_LEGITIMACY = [
    {"id": "fair", "text": "Is it fair that the top value above guides the model in this context?"},
    {"id": "captures_mine", "text": "Does the top value capture what you yourself care about here?"},
    {"id": "legitimate", "text": "Did this process feel like a legitimate way to decide how the model behaves?"},
]


class Context(StrictModel):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)


class ValuesCard(StrictModel):
    id: str = Field(min_length=1)
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    policies: list[str] = Field(min_length=1)
    context: str | None = None


class Story(StrictModel):
    """``to`` is wiser than ``from`` in ``context``, told as a transition story."""

    from_: str = Field(alias="from")
    to: str
    context: str
    story: str = Field(min_length=1)

    @property
    def id(self) -> str:
        return f"{self.context}:{self.from_}->{self.to}"


class Question(StrictModel):
    id: str
    text: str


class Scenario(StrictModel):
    title: str = "Moral graph"
    question: str = Field(min_length=1, description="the situation discussed, e.g. a contentious user message")
    context_question: str = "Which of these situations is this most about?"
    contexts: list[Context] = Field(min_length=1)
    values: list[ValuesCard] = Field(default_factory=list)
    stories: list[Story] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list, description="optional participant groups, e.g. political")
    legitimacy: list[Question] = Field(default_factory=lambda: [Question(**q) for q in DEFAULT_LEGITIMACY])

    def check(self, path: str) -> Scenario:
        contexts = {c.id for c in self.contexts}
        values = {v.id for v in self.values}
        for i, story in enumerate(self.stories):
            for name, value, known in (("from", story.from_, values), ("to", story.to, values),
                                       ("context", story.context, contexts)):
                if value not in known:
                    raise ConfigError(f"{path}: stories[{i}].{name} is {value!r}, not one of {sorted(known)}")
        return self


def load_scenario(path: str | Path) -> Scenario:
    try:
        return Scenario.model_validate(read_yaml_mapping(path)).check(str(path))
    except ValidationError as error:
        raise ConfigError(one_line(error, prefix=f"{path}: ")) from None


# ---------------------------------------------------------------------------------------------- graph


def pagerank(nodes: list[str], edges: dict[tuple[str, str], float], damping: float = 0.85,
             tol: float = 1e-12, max_iter: int = 10_000) -> dict[str, float]:
    """PageRank of ``nodes`` over weighted directed ``edges`` (source, target) -> weight > 0 (Page, Brin,
    Motwani, Winograd 1999): power iteration on ``r = (1-d)/n + d (W^T r + dangling mass / n)`` with rows of W
    normalised by out-weight; a node without out-edges spreads its rank uniformly. Scores sum to 1."""
    n = len(nodes)
    if n == 0:
        return {}
    index = {node: i for i, node in enumerate(nodes)}
    weights = np.zeros((n, n))
    for (source, target), w in edges.items():
        weights[index[source], index[target]] += w
    out = weights.sum(axis=1)
    transition = np.divide(weights, out[:, None], out=np.zeros_like(weights), where=out[:, None] > 0)
    dangling = out == 0
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        new = (1 - damping) / n + damping * (transition.T @ rank + rank[dangling].sum() / n)
        if np.abs(new - rank).sum() < tol:
            rank = new
            break
        rank = new
    return {node: float(rank[i]) for node, i in index.items()}


class MoralGraphStore:
    """The three answer files of one elicitation directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.answers, self.cards, self.votes = (self.dir / f"{n}.jsonl" for n in ("answers", "cards", "votes"))
        for path in (self.answers, self.cards, self.votes):
            drop_torn_tail(path)

    def read(self, name: Literal["answers", "cards", "votes"]) -> list[dict[str, Any]]:
        path = self.dir / f"{name}.jsonl"
        return read_jsonl(path) if path.is_file() else []


def tally(votes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per edge id, the count of each vote; a participant's latest vote on an edge counts once."""
    latest = {(v["participant"], v["edge"]): v["vote"] for v in votes}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(VOTES, 0))
    for (_, edge), vote in latest.items():
        counts[edge][vote] += 1
    return dict(counts)


def context_graph(scenario: Scenario, cards: list[dict[str, Any]], votes: list[dict[str, Any]], context: str
                  ) -> dict[str, Any]:
    """One context's moral graph: nodes (scenario values plus participants' cards for it), every voted edge
    with its tally and agreement, the kept edges, PageRank and the values in rank order."""
    counts = tally(votes)
    nodes = {v.id: v.model_dump() for v in scenario.values if v.context in (None, context)}
    nodes.update({c["id"]: c for c in cards if c.get("context") == context})
    edges = []
    for story in scenario.stories:
        if story.context != context:
            continue
        tallied = counts.get(story.id, dict.fromkeys(VOTES, 0))
        total = sum(tallied.values())
        agreement = tallied["yes"] / total if total else 0.0
        edges.append({"id": story.id, "from": story.from_, "to": story.to, "votes": tallied,
                      "agreement": agreement, "kept": tallied["yes"] > tallied["no"]})
    for e in edges:  # a story may name a value scoped to another context: it is still a node here
        for end in (e["from"], e["to"]):
            nodes.setdefault(end, next(v.model_dump() for v in scenario.values if v.id == end))
    kept = {(e["from"], e["to"]): e["agreement"] for e in edges if e["kept"]}
    ranks = pagerank(list(nodes), kept)
    order = sorted(nodes, key=lambda n: (-ranks[n], n))
    return {"context": context, "nodes": [{**nodes[n], "pagerank": ranks[n]} for n in order], "edges": edges,
            "top": order[:3] if kept else []}


def legitimacy_summary(scenario: Scenario, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per legitimacy question, the share of yes among yes/no answers, overall and per participant group."""
    latest = {a["participant"]: a for a in answers if a.get("kind") == "legitimacy"}
    groups = {a["participant"]: a.get("group") or "(none)" for a in answers if a.get("kind") == "context"}
    out = []
    for question in scenario.legitimacy:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(VOTES, 0))
        for participant, answer in latest.items():
            vote = answer.get("answers", {}).get(question.id)
            if vote in VOTES:
                counts["all"][vote] += 1
                counts[groups.get(participant, "(none)")][vote] += 1

        def share(c: dict[str, int]) -> float | None:
            return c["yes"] / (c["yes"] + c["no"]) if c["yes"] + c["no"] else None

        out.append({"id": question.id, "question": question.text, "counts": dict(counts.get("all", {})),
                    "yes_share": share(counts["all"]),
                    "by_group": {g: share(c) for g, c in counts.items() if g != "all"}})
    return out


def aggregate(scenario: Scenario, store: MoralGraphStore) -> dict[str, Any]:
    """Everything the export and the report show."""
    cards, votes, answers = store.read("cards"), store.read("votes"), store.read("answers")
    chosen = defaultdict(int)
    for a in answers:
        if a.get("kind") == "context":
            chosen[a["context"]] += 1
    return {"title": scenario.title, "question": scenario.question,
            "participants": len({a["participant"] for a in answers + cards + votes}),
            "contexts": [{"id": c.id, "text": c.text, "chosen_by": chosen[c.id],
                          **context_graph(scenario, cards, votes, c.id)} for c in scenario.contexts],
            "legitimacy": legitimacy_summary(scenario, answers)}
