"""Turn records into token ids with an exact prompt/response boundary.

Prompt and response are tokenized separately, the way the model sees them at generation time: the prompt
is rendered with the model's chat template (``add_generation_prompt=True``), the response is whatever the
template appends for the assistant turn, cut right after the EOS token. Base models without a chat
template get a plain ``User:/Assistant:`` rendering. BOS is added once, only when the tokenizer normally
adds it and the template has not already; EOS closes every response.

Truncation keeps the *end* of the prompt (the question is there) and the *start* of each response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from alignkit.data.records import Message, Text

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def to_messages(text: Text, role: str = "user") -> list[dict[str, str]]:
    if isinstance(text, str):
        return [{"role": role, "content": text}]
    return [m.model_dump() if isinstance(m, Message) else dict(m) for m in text]


def prompt_messages(prompt: Text, system: str | None = None) -> list[dict[str, str]]:
    messages = to_messages(prompt)
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _plain_render(messages: list[dict[str, str]]) -> str:
    return "".join(f"{PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}\n\n" for m in messages)


@dataclass
class PromptEncoder:
    """Encodes prompts and responses for one tokenizer; caches what it learns about the tokenizer."""

    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool | None = None  # None: use it when the tokenizer has one
    # Where a response ends: "eos" stops at the end-of-sequence token (the default); "template" keeps what the
    # chat template writes after it (ChatML's newline after <|im_end|>), as TRL's DPOTrainer scores it.
    response_end: str = "eos"
    _adds_bos: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.use_chat_template is None:
            self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._adds_bos = _adds_bos(self.tokenizer)
        if self.response_end not in ("eos", "template"):
            raise ValueError(f"response_end must be 'eos' or 'template', got {self.response_end!r}")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token; set tokenizer.eos_token before training")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_text(self, prompt: Text, system: str | None = None) -> str:
        messages = prompt_messages(prompt, system)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _plain_render(messages) + "Assistant:"

    def encode_prompt(self, prompt: Text, system: str | None = None) -> list[int]:
        ids = self._ids(self.prompt_text(prompt, system))
        if self._adds_bos and ids[:1] != [self.tokenizer.bos_token_id]:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids

    def response_text(self, prompt: Text, response: Text, system: str | None = None) -> str:
        if not self.use_chat_template:
            body = response if isinstance(response, str) else "\n\n".join(m["content"] for m in
                                                                         to_messages(response))
            return " " + body.strip()
        messages = prompt_messages(prompt, system)
        rendered_prompt = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                             add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(messages + to_messages(response, role="assistant"),
                                                  tokenize=False)
        if not full.startswith(rendered_prompt):
            raise ValueError("the chat template renders the prompt differently when a response follows; "
                             "cannot find the prompt/response boundary (set use_chat_template: false)")
        return full[len(rendered_prompt):]

    def encode_response(self, prompt: Text, response: Text, system: str | None = None) -> list[int]:
        ids = self._ids(self.response_text(prompt, response, system))
        eos = self.tokenizer.eos_token_id
        if eos not in ids:
            ids.append(eos)
        elif self.response_end == "eos":  # drop what the template puts after the final EOS (e.g. a newline)
            ids = ids[: len(ids) - ids[::-1].index(eos)]
        return ids


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    prompt_truncated: bool = False
    response_truncated: bool = False


@dataclass
class EncodedExample:
    """One prompt with one response (SFT, binary feedback)."""

    prompt: list[int]
    response: list[int]
    prompt_truncated: bool = False
    response_truncated: bool = False
    label: bool | None = None  # binary feedback: True = desirable


def truncate(prompt: list[int], responses: list[list[int]], max_length: int, max_prompt_length: int
             ) -> tuple[list[int], list[list[int]], bool, bool]:
    """Fit prompt + each response into ``max_length`` tokens.

    The prompt keeps its last tokens and gives up room only down to ``max_prompt_length``; responses keep
    their first tokens. The prompt is cut identically for all responses so they still share it.
    """
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, responses, False, False
    keep_prompt = min(len(prompt), max(max_prompt_length, max_length - longest))
    keep_prompt = min(keep_prompt, max_length - 1)  # always leave room for one response token
    prompt_truncated = keep_prompt < len(prompt)
    prompt = prompt[len(prompt) - keep_prompt:]
    budget = max_length - keep_prompt
    response_truncated = longest > budget
    return prompt, [r[:budget] for r in responses], prompt_truncated, response_truncated


@dataclass
class TruncationStats:
    n: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0

    def add(self, item: EncodedPair | EncodedExample) -> None:
        self.n += 1
        self.prompt_truncated += item.prompt_truncated
        self.response_truncated += item.response_truncated

    def summary(self) -> str:
        return (f"{self.n} examples: {self.prompt_truncated} prompts and {self.response_truncated} "
                f"responses truncated")


def encode_pair(encoder: PromptEncoder, prompt: Text, chosen: Text, rejected: Text, system: str | None,
                max_length: int, max_prompt_length: int) -> EncodedPair:
    p = encoder.encode_prompt(prompt, system)
    c = encoder.encode_response(prompt, chosen, system)
    r = encoder.encode_response(prompt, rejected, system)
    p, (c, r), pt, rt = truncate(p, [c, r], max_length, max_prompt_length)
    return EncodedPair(p, c, r, pt, rt)


def encode_example(encoder: PromptEncoder, prompt: Text, response: Text, system: str | None,
                   max_length: int, max_prompt_length: int) -> EncodedExample:
    p = encoder.encode_prompt(prompt, system)
    r = encoder.encode_response(prompt, response, system)
    p, (r,), pt, rt = truncate(p, [r], max_length, max_prompt_length)
    return EncodedExample(p, r, pt, rt)
