"""Run a scenario: every conversation (item x condition x sample) generated in batches through the engine,
each appended to ``transcripts.jsonl`` (fsynced) as soon as it is complete.

The file is also the cache: a conversation's key hashes the model, the exact prompts and the sampling
settings, so a second run, or a run killed and started again, generates only the conversations whose key
is not in it yet. Scoring reads the transcripts and never regenerates (see :mod:`alignkit.scenarios.score`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.io import append_jsonl, iter_jsonl
from alignkit.progress import Bars
from alignkit.scenarios.spec import Generation, Planned, Scenario, content_key

TRANSCRIPTS = "transcripts.jsonl"


@dataclass
class Speaker:
    """A model with its tokenizer and the name that goes into cache keys."""

    name: str
    model: Any
    tokenizer: Any


def load_transcripts(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished conversations by key (a torn last line, from a kill mid-append, is dropped)."""
    path = out_dir / TRANSCRIPTS
    return {row["key"]: row for row in iter_jsonl(path)} if path.is_file() else {}


def _messages(system: str, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    for role, text in turns:
        out.append({"role": role, "content": text})
    return out


def _reply_batch(speaker: Speaker, conversations: list[list[dict[str, str]]], gen: Generation, prefill: str,
                 max_new_tokens: int, salt: str) -> tuple[list[str], list[str]]:
    """One reply per conversation (batched, one prefill each), and the exact prompt text each saw."""
    from alignkit.data.tokenize import PromptEncoder
    from alignkit.engine.generation import SamplingParams, decode_response, sample_ids

    tokenizer = speaker.tokenizer
    encoder = PromptEncoder(tokenizer)
    texts = [encoder.prompt_text(messages) + prefill for messages in conversations]
    prefill_ids = tokenizer(prefill, add_special_tokens=False).input_ids if prefill else []
    prompts = [encoder.encode_prompt(messages) + prefill_ids for messages in conversations]
    # the seed is fixed by what is generated, so a resumed batch draws what the first attempt drew
    seed = int(content_key(gen.seed, salt)[:8], 16)
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=gen.do_sample, temperature=gen.temperature,
                            top_p=gen.top_p, stop=tuple(gen.stop), seed=seed)
    out = sample_ids(speaker.model, prompts, params, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer, batch_size=len(prompts))
    replies = [prefill + decode_response(tokenizer, rows[0], gen.stop) for rows in out.responses]
    return replies, texts


def _flipped(planned: Planned, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The conversation as the user simulator sees it: its instructions as system prompt, the target's
    replies as the user's turns and its own earlier turns as the assistant's."""
    swap = {"user": "assistant", "assistant": "user"}
    return _messages(planned.simulator_system or "", [(swap[role], text) for role, text in turns])


def run_batch(batch: list[Planned], target: Speaker, scenario: Scenario, simulator: Speaker | None) -> list[dict]:
    """Run a batch of conversations to the end: scripted user turns, then simulated ones, a batched target
    reply after each. Returns one transcript row per conversation."""
    gen = scenario.generation
    turns: list[list[tuple[str, str]]] = [[] for _ in batch]
    prompts: list[list[str]] = [[] for _ in batch]
    salt = "|".join(p.key for p in batch)
    scripted = max(len(p.turns) for p in batch)
    simulated = scenario.simulator.turns if scenario.simulator else 0
    for t in range(scripted + simulated):
        if t < scripted:
            active = [i for i, p in enumerate(batch) if t < len(p.turns)]
            for i in active:
                turns[i].append(("user", batch[i].turns[t]))
        else:
            active = list(range(len(batch)))
            assert simulator is not None and scenario.simulator is not None
            asks, _ = _reply_batch(simulator, [_flipped(batch[i], turns[i]) for i in active], gen, "",
                                   scenario.simulator.max_new_tokens, f"{salt}|sim|{t}")
            for i, ask in zip(active, asks, strict=True):
                turns[i].append(("user", ask))
        replies, texts = _reply_batch(target, [_messages(batch[i].system, turns[i]) for i in active], gen,
                                      gen.prefill, gen.max_new_tokens, f"{salt}|{t}")
        for i, reply, text in zip(active, replies, texts, strict=True):
            turns[i].append(("assistant", reply))
            prompts[i].append(text)
    return [{"key": p.key, "scenario": scenario.name, "item_id": p.item_id, "condition": p.condition,
             "sample": p.sample, "model": target.name, "messages": _messages(p.system, turns[i]),
             "replies": [text for role, text in turns[i] if role == "assistant"], "prompts": prompts[i]}
            for i, p in enumerate(batch)]


def generate_conversations(planned: list[Planned], scenario: Scenario, out_dir: Path, target: Speaker,
                           simulator: Speaker | None = None, progress: bool = True,
                           log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Generate what ``transcripts.jsonl`` lacks, appending each conversation as its batch completes;
    returns every planned conversation's transcript by key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = load_transcripts(out_dir)
    pending = [p for p in planned if p.key not in done]
    log(f"{scenario.name}: {len(planned)} conversations, {len(planned) - len(pending)} cached, "
        f"{len(pending)} to generate")
    if pending and scenario.simulator and simulator is None:
        simulator = target
    size = scenario.generation.batch_size
    with Bars(enabled=progress and bool(pending)).open() as bars:
        advance = bars.task(f"{scenario.name}", len(pending))
        for start in range(0, len(pending), size):
            for row in run_batch(pending[start:start + size], target, scenario, simulator):
                append_jsonl(out_dir / TRANSCRIPTS, row)
                done[row["key"]] = row
            advance(len(pending[start:start + size]))
    return {p.key: done[p.key] for p in planned}
