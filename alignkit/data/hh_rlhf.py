"""Anthropic HH-RLHF transcripts and implicit-prompt conversations.

HH-RLHF rows hold two whole transcripts, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, that share every turn
but the last assistant one. :func:`parse_transcript` turns a transcript into messages and
:func:`split_prompt_response` recovers (prompt, chosen response, rejected response) from two conversations;
the latter also serves any dataset that stores chosen/rejected as full message lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alignkit.data.records import Message

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_transcript(value: object) -> bool:
    """Whether ``value`` looks like an HH-RLHF transcript (cheap check used for format detection)."""
    return isinstance(value, str) and value.lstrip().startswith("Human:")


def parse_transcript(text: str, *, merge_consecutive: bool = True) -> list[Message]:
    """Split an HH-RLHF transcript on ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` into stripped messages.

    A leading ``Human:`` without the two newlines is accepted (several re-uploads drop them). Consecutive
    turns of one role (a handful of HH-RLHF transcripts have two Assistant turns in a row) are joined with a
    blank line when ``merge_consecutive``, because most chat templates insist on alternating roles.
    Empty turns are kept: an empty final Assistant turn is real data, judged by record validation.

    Raises ValueError when the text is empty or does not start with a Human turn.
    """
    if not isinstance(text, str):
        raise ValueError(f"transcript must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("transcript is empty")
    body = text.lstrip()
    if not body.startswith("Human:"):
        raise ValueError(f"transcript does not start with 'Human:' (it starts with {body[:40]!r})")
    parts = _TURN.split("\n\n" + body)
    # parts = ["", role, content, role, content, ...]; parts[0] is empty because body starts with a turn.
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = _ROLES[speaker]
        content = content.strip()
        if merge_consecutive and messages and messages[-1].role == role:
            previous = messages[-1].content
            joined = f"{previous}\n\n{content}" if previous and content else previous or content
            messages[-1] = Message(role=role, content=joined)
        else:
            messages.append(Message(role=role, content=content))
    return messages


def split_prompt_response(
    chosen_msgs: Sequence[Message], rejected_msgs: Sequence[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """Split two conversations that share a prompt into (prompt, chosen response, rejected response).

    The prompt is the longest shared message prefix, cut back to end with a user turn, so it stops before
    the first differing assistant turn; each response is the rest of its conversation and may only hold
    assistant/tool turns. Error messages start with the field they concern (``chosen``, ``rejected``,
    ``prompt``) so callers can attribute them.
    """
    chosen_msgs, rejected_msgs = list(chosen_msgs), list(rejected_msgs)
    if chosen_msgs == rejected_msgs:
        raise ValueError("chosen is identical to rejected")
    shared = 0
    for c, r in zip(chosen_msgs, rejected_msgs, strict=False):
        if c != r:
            break
        shared += 1
    cut = shared
    while cut > 0 and chosen_msgs[cut - 1].role != "user":
        cut -= 1
    if cut == 0:
        raise ValueError(
            "prompt cannot be inferred: chosen and rejected share no leading turns ending with a user turn"
        )
    prompt = chosen_msgs[:cut]
    chosen, rejected = chosen_msgs[cut:], rejected_msgs[cut:]
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response:
            raise ValueError(f"{name} has no response: it ends with the shared prompt's user turn")
        for i, message in enumerate(response, start=cut):
            if message.role not in ("assistant", "tool"):
                raise ValueError(
                    f"{name} differs from {'rejected' if name == 'chosen' else 'chosen'} before its final "
                    f"assistant turn(s): message {i} is a {message.role} turn, so the two are not "
                    "responses to one prompt"
                )
    return prompt, chosen, rejected
