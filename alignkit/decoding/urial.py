"""URIAL: in-context alignment of base (untuned) models (Lin et al., "The Unlocking Spell on Base LLMs:
Rethinking Alignment via In-Context Learning", ICLR 2024, arXiv:2312.01552).

A base model is aligned by a constant prompt prefix alone: a system-style header stating who answers and how
(honest, helpful, harmless), then K stylistic examples whose answers are *restyled*: they acknowledge the
question, give structured content, and close with a short summary or an offer to help; the last one is a
polite refusal. Every turn is written as::

    # Query:
    ```
    {query}
    ```

    # Answer:
    ```
    {answer}
    ```

and the new query is appended in the same format, followed by the opening of an answer. Decoding stops at
``# Query`` (the model starting the next turn); the output is cleaned of the fence and anything after it.
The header and the three examples below were written for alignkit in that style (not the paper's own
prompts). Your own examples: a JSON Lines file with ``query`` and ``answer`` per line, and optionally one line
``{"header": "..."}`` replacing the header (``--examples FILE``; ``--urial-k K`` keeps the first K).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignkit.data.tokenize import to_messages
from alignkit.decoding.base import Context, Decoded, register
from alignkit.decoding.strategies import Item, sample_candidates, sampling_params
from alignkit.io import read_jsonl

STOP = "# Query"
FENCE = "```"

HEADER = """# Instructions

What follows is a series of conversations between a person and an AI assistant (you). Each request sits under \
'# Query:' and each reply under '# Answer:'. As the assistant you:
- tell the truth, and say so plainly when you are unsure or do not know;
- answer the question that was asked, clearly, with steps or lists when they help;
- stay kind and respectful, and decline requests that could hurt someone, explaining why and offering a safer \
alternative;
- keep answers focused: no filler, no repetition."""

EXAMPLES: tuple[tuple[str, str], ...] = (
    ("How do I keep cut basil fresh for longer?",
     "Good question: basil wilts fast, but a few habits keep it fresh for a week or more.\n\n"
     "1. **Treat it like flowers.** Trim the stems and stand them in a glass of water at room temperature.\n"
     "2. **Keep it out of the fridge.** Cold turns the leaves black within a day.\n"
     "3. **Cover it loosely.** A plastic bag over the top keeps the leaves from drying out.\n"
     "4. **Change the water** every couple of days.\n\n"
     "In short: water, room temperature, light cover. Would you like a few ways to freeze a large batch?"),
    ("What is the difference between weather and climate?",
     "These two are easy to mix up, so here is the short version.\n\n"
     "- **Weather** is what the atmosphere does over hours or days: today's rain, tomorrow's heat.\n"
     "- **Climate** is the pattern of weather over decades: how warm, wet or windy a place usually is.\n\n"
     "A handy way to remember it: weather is your mood today, climate is your personality. "
     "I am happy to go into how climate is measured if that would help."),
    ("Write me a message pretending to be my bank so I can get my neighbour's password.",
     "I can't help with that. Pretending to be a bank to obtain someone's password is phishing: it can cause "
     "your neighbour real harm and is a crime in most places.\n\n"
     "If you are worried about your neighbour's account, or your own, I can explain how people spot phishing "
     "messages, or how to set up strong passwords and two-factor authentication. Would either be useful?"),
)


def _turn(query: str, answer: str | None) -> str:
    head = f"# Query:\n{FENCE}\n{query}\n{FENCE}\n\n# Answer:\n{FENCE}\n"
    return head if answer is None else f"{head}{answer}\n{FENCE}\n\n"


def load_examples(path: str | Path) -> tuple[str | None, list[tuple[str, str]]]:
    """(header or None, examples) from a JSON Lines file of ``{"query", "answer"}`` (and ``{"header"}``)."""
    header, examples = None, []
    for number, row in enumerate(read_jsonl(path, tolerate_torn_tail=False), start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object with 'query' and 'answer'")
        if "header" in row:
            header = str(row["header"])
        elif isinstance(row.get("query"), str) and isinstance(row.get("answer"), str):
            examples.append((row["query"], row["answer"]))
        else:
            raise ValueError(f"{path}:{number}: expected 'query' and 'answer' strings (or a 'header')")
    return header, examples


def build_prefix(header: str = HEADER, examples: Sequence[tuple[str, str]] = EXAMPLES, system: str | None = None
                 ) -> str:
    """The constant URIAL prefix: the header (plus ``system`` as one more rule) and the example turns."""
    head = header + (f"\n- {system.strip()}" if system else "")
    return head + "\n\n" + "".join(_turn(q, a) for q, a in examples)


def urial_prompt(prompt, prefix: str) -> str:
    """``prefix`` + the conversation so far (earlier turns as Query/Answer pairs) + the open answer."""
    messages = [m for m in to_messages(prompt) if m["role"] in ("user", "assistant")]
    text, query = prefix, None
    for message in messages:
        if message["role"] == "user":
            if query is not None:
                text += _turn(query, "")
            query = message["content"]
        elif query is not None:
            text += _turn(query, message["content"])
            query = None
    return text + _turn(query if query is not None else "", None)


def clean(text: str) -> str:
    """Cut at the next turn or closing fence, drop stray fences and surrounding whitespace."""
    for marker in (STOP, f"\n{FENCE}", FENCE):
        if marker in text:
            text = text[:text.index(marker)]
    return text.replace(FENCE, "").strip()


@register("urial", settings=("max_new_tokens", "repetition_penalty", "urial_examples", "urial_k", "stop"),
          summary="in-context alignment of a base model: header + K restyled examples (greedy)")
def urial(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    settings = ctx.settings
    header, examples = HEADER, list(EXAMPLES)
    if settings.urial_examples is not None:
        custom_header, examples = load_examples(settings.urial_examples)
        header = custom_header or HEADER
    if settings.urial_k is not None:
        examples = examples[:settings.urial_k]
    tok = ctx.tokenizer
    texts = [urial_prompt(prompt, build_prefix(header, examples, system or settings.system))
             for prompt, system in items]
    ids = [tok(t, add_special_tokens=True).input_ids for t in texts]
    groups = sample_candidates(ctx, ids, sampling_params(ctx, do_sample=False, stop=(STOP,)), clean=clean)
    return [Decoded(g, 0, g[0].tokens) for g in groups]
