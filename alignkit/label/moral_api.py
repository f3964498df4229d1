"""The Moral Graph page's API: a participant picks the context, writes a values card, votes on wiser-than
edges (each with its transition story), then answers the legitimacy questions about the current top value.
Every answer is appended (fsynced) to the elicitation directory before the page moves on; a participant who
comes back is not asked again about an edge they voted on."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from alignkit.io import append_jsonl
from alignkit.label.moral_graph import VOTES, MoralGraphStore, Scenario, context_graph
from alignkit.label.server import STATIC, api, json_body


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _text(body: dict[str, Any], key: str, limit: int = 2000, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise ValueError(f"{key} must be non-empty text of at most {limit} characters")
    return value.strip()


class MoralSession:
    def __init__(self, scenario: Scenario, directory: Any) -> None:
        self.scenario = scenario
        self.store = MoralGraphStore(directory)
        self.values = {v.id: v.model_dump() for v in scenario.values}
        self.contexts = {c.id for c in scenario.contexts}

    def participant(self, body: dict[str, Any]) -> str:
        return _text(body, "participant", limit=100)

    def context(self, body: dict[str, Any]) -> str:
        context = body.get("context")
        if context not in self.contexts:
            raise ValueError(f"context must be one of {sorted(self.contexts)}")
        return context

    def next_story(self, participant: str, context: str) -> dict[str, Any] | None:
        voted = {v["edge"] for v in self.store.read("votes") if v["participant"] == participant}
        stories = [s for s in self.scenario.stories if s.context == context]
        todo = [s for s in stories if s.id not in voted]
        if not todo:
            return None
        story = todo[0]
        return {"edge": story.id, "story": story.story, "from": self.values[story.from_],
                "to": self.values[story.to], "done": len(stories) - len(todo), "total": len(stories)}


def moral_routes(session: MoralSession) -> list[Route]:
    scenario, store = session.scenario, session.store

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "moral.html")

    async def describe(request: Request) -> dict[str, Any]:
        return scenario.model_dump(include={"title", "question", "context_question", "contexts", "groups",
                                            "legitimacy"})

    async def choose_context(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        group = _text(body, "group", limit=100, required=False) or None
        append_jsonl(store.answers, {"kind": "context", "participant": session.participant(body), "group": group,
                                     "context": session.context(body), "at": _now()})
        return {"ok": True}

    async def card(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        participant, context = session.participant(body), session.context(body)
        policies = body.get("policies")
        if not isinstance(policies, list) or not policies or not all(isinstance(p, str) and p.strip()
                                                                     for p in policies):
            raise ValueError("policies must be a non-empty list of attentional policies (one a line)")
        mine = [c for c in store.read("cards") if c["participant"] == participant]
        row = {"id": f"{participant}:{len(mine) + 1}", "participant": participant, "context": context,
               "title": _text(body, "title", limit=200), "description": _text(body, "description", required=False),
               "policies": [p.strip() for p in policies], "at": _now()}
        append_jsonl(store.cards, row)
        return row

    async def next_edge(request: Request) -> dict[str, Any]:
        query = dict(request.query_params)
        return {"next": session.next_story(session.participant(query), session.context(query))}

    async def vote(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        participant, context = session.participant(body), session.context(body)
        if body.get("vote") not in VOTES:
            raise ValueError(f"vote must be one of {list(VOTES)}")
        if body.get("edge") not in {s.id for s in scenario.stories if s.context == context}:
            raise ValueError(f"edge {body.get('edge')!r} is not a story of context {context!r}")
        append_jsonl(store.votes, {"participant": participant, "context": context, "edge": body["edge"],
                                   "vote": body["vote"], "at": _now()})
        return {"next": session.next_story(participant, context)}

    async def top(request: Request) -> dict[str, Any]:
        context = session.context(dict(request.query_params))
        graph = context_graph(scenario, store.read("cards"), store.read("votes"), context)
        best = graph["top"][0] if graph["top"] else None
        return {"top": next((n for n in graph["nodes"] if n["id"] == best), None)}

    async def legitimacy(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        answers = body.get("answers")
        known = {q.id for q in scenario.legitimacy}
        if not isinstance(answers, dict) or not set(answers) <= known or not set(answers.values()) <= set(VOTES):
            raise ValueError(f"answers must map questions {sorted(known)} to one of {list(VOTES)}")
        append_jsonl(store.answers, {"kind": "legitimacy", "participant": session.participant(body),
                                     "context": session.context(body), "answers": answers, "at": _now()})
        return {"ok": True}

    return [Route("/moral", page), Route("/api/moral/scenario", api(describe)),
            Route("/api/moral/context", api(choose_context), methods=["POST"]),
            Route("/api/moral/card", api(card), methods=["POST"]),
            Route("/api/moral/next", api(next_edge)), Route("/api/moral/vote", api(vote), methods=["POST"]),
            Route("/api/moral/top", api(top)), Route("/api/moral/legitimacy", api(legitimacy), methods=["POST"])]
