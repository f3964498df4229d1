"""LSC against the raw sum on the same samples: reselect saved best-of-N candidates with several combined rewards
and compare the share of picks that pass every check (Wang et al., "Transforming and Combining Rewards for
Aligning Large Language Models", ICML 2024, arXiv:2402.00742; the transform is in :mod:`alignkit.rewards.lsc`).

Sampling is the expensive part, so it is done once (``alignkit generate --strategy best_of_n`` keeps every
candidate); :func:`compare_selection` then scores the same candidates with each selector (a weighted sum of
reward sources, raw or LSC-transformed) and picks per prompt the highest score (ties: the higher log-prob, as
best-of-N does). An ``lsc:`` term's reference point r_ref(x) is the quantile of its reward over the prompt's own
candidates: they are samples of the decoded model, the π_0 of decoding-time alignment, exactly what the paper
computes r_ref from, so no further sampling is needed.

Two objectives on the same prompts. With two 0/1 verifiers, the raw sum and the LSC sum pick the same responses
(both are increasing in each verifier, so a candidate passing both wins under either; they differ only in how they
break a tie between "passes A only" and "passes B only"), so the comparison would show nothing. The demonstration
therefore uses the synthetic prompts with a fact to state under a word limit (``concise``: "… Be brief.", at most
6 words; ``format``: "Answer in under N words: …" and "Reply with exactly one word: …"), two checks

* ``correct`` (:class:`Correct`): the reply contains the fact's answer (1/0),
* ``brief`` (:class:`Brief`): the reply keeps the prompt's word limit (1/0),

and as the second reward a continuous one, ``brevity`` (:class:`Brevity`): −words/2, a length-preference reward
model in caricature that keeps rewarding shorter replies past the limit. The raw sum correct + brevity lets four
words saved buy off a wrong answer; LSC's log σ(brevity − r_ref) saturates once a reply is shorter than the
prompt's typical sample, so correctness decides among the short ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignkit.data.records import Text
from alignkit.data.synthetic import FAMILIES, make_synthetic
from alignkit.data.synthetic.facts import Fact, contains_answer, lookup_fact, normalize, words
from alignkit.rewards.base import check_lengths, preferences_from_rewards, prompt_text
from alignkit.rewards.lsc import lsc_transform, prompt_key, reference_point, split_lsc_prefix
from alignkit.stats import bootstrap_mean

# ------------------------------------------------------------------------------------------ the two objectives


def length_task(prompt: str) -> tuple[Fact, str] | None:
    """(the fact asked for, the family) of a synthetic prompt that asks for a fact under a word limit, else None."""
    prompt = prompt.strip()
    if FAMILIES["concise"].matches(prompt):
        return lookup_fact(prompt.rsplit("?", 1)[0] + "?"), "concise"
    kind, _ = FAMILIES["format"].instruction(prompt)
    if kind in ("under", "one_word"):
        fact = lookup_fact(prompt.split(": ", 1)[1])
        return (fact, "format") if fact is not None else None
    return None


def _task(prompt: Text) -> tuple[Fact, str]:
    task = length_task(prompt_text(prompt))
    if task is None:
        raise ValueError(f"not a synthetic prompt asking for a fact under a word limit: {prompt_text(prompt)[:80]!r} "
                         "(make them with 'alignkit reward lsc-prompts')")
    return task


class _PerResponse:
    """A reward source from a per-(prompt, response) function."""

    def score(self, prompt: Text, response: str) -> float:
        raise NotImplementedError

    def rewards(self, prompts: Sequence[Text], responses: Sequence[str]) -> Tensor:
        check_lengths(prompts, responses)
        return torch.tensor([self.score(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=torch.float32)

    def preferences(self, prompts: Sequence[Text], first: Sequence[str], second: Sequence[str]) -> Tensor:
        return preferences_from_rewards(self, prompts, first, second)

    @staticmethod
    def preference_from_rewards(first: Tensor, second: Tensor) -> Tensor:
        return torch.sigmoid(first.float() - second.float())


class Correct(_PerResponse):
    """1 when the reply contains the fact's answer (the synthetic verifiers' own check), else 0."""

    def score(self, prompt: Text, response: str) -> float:
        return float(contains_answer(response, _task(prompt)[0]))


class Brief(_PerResponse):
    """1 when the reply keeps the prompt's word limit (concise: 1 to 6 words; format: the format verifier), else 0."""

    def score(self, prompt: Text, response: str) -> float:
        text, family = prompt_text(prompt), _task(prompt)[1]
        if family == "format":
            return float(FAMILIES["format"].verify(text, response))
        return float(0 < len(words(normalize(response))) <= FAMILIES["concise"].max_words)


class Brevity(_PerResponse):
    """−words/``scale``: shorter is always better, with no bound at the limit (one logit per ``scale`` words)."""

    def __init__(self, scale: float = 2.0):
        self.scale = scale

    def score(self, prompt: Text, response: str) -> float:
        return -len(words(normalize(response))) / self.scale


ALIASES = {"correct": f"{__name__}:Correct", "brief": f"{__name__}:Brief", "brevity": f"{__name__}:Brevity"}


def length_prompts(n: int = 96, seed: int = 0) -> list[str]:
    """``n`` distinct held-out synthetic prompts (the test split) asking for a fact under a word limit."""
    _, test = make_synthetic(0, max(400, 4 * n), seed=seed, families=["concise", "format"])
    prompts = list(dict.fromkeys(p.prompt for p in test if length_task(p.prompt) is not None))
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} distinct held-out prompts of this kind; ask for at most that many")
    return prompts[:n]


# ------------------------------------------------------------------------------------------ selection


def parse_selector(text: str) -> tuple[str, list[tuple[float, str]]]:
    """``NAME=TERM+TERM…``, TERM ``[W*]SPEC`` (SPEC: an alias, ``lsc:``/``lsc@Q:`` + a spec, a reward-model
    directory or ``package.module:attr``) -> (name, [(weight, spec)])."""
    name, eq, body = text.partition("=")
    if not eq or not name.strip() or not body.strip():
        raise ValueError(f"selector {text!r}: expected NAME=SPEC[+SPEC...], e.g. raw=correct+brevity")
    terms = []
    for term in body.split("+"):
        head, star, tail = term.strip().partition("*")
        weight = 1.0
        if star:
            try:
                weight, term = float(head), tail.strip()
            except ValueError:
                raise ValueError(f"selector {text!r}: weight {head!r} is not a number") from None
        if not term.strip():
            raise ValueError(f"selector {text!r}: an empty term")
        terms.append((weight, term.strip()))
    return name.strip(), terms


def term_rewards(specs: Sequence[str], prompts: Sequence[Text], groups: Sequence[Sequence[str]], device=None,
                 log=print) -> dict[str, Tensor]:
    """Each distinct spec's rewards of every candidate ([candidates], prompt by prompt), each source built and run
    once: a check, a raw term and the body of an ``lsc:`` term naming the same reward share one scoring pass (a
    reward model is loaded and run once per comparison, however many selectors use it).

    An ``lsc:`` term is its body's rewards transformed, u = log σ(r − r_ref(x)), with r_ref(x) the quantile of r
    over the prompt's candidates (those of its first row when a prompt repeats)."""
    from alignkit.rewards.sources import build_source

    flat_prompts = [p for p, g in zip(prompts, groups, strict=True) for _ in g]
    flat_texts = [t for g in groups for t in g]
    raw: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    for spec in dict.fromkeys(specs):
        lsc, body = split_lsc_prefix(spec)
        body = ALIASES.get(body, body)
        if body not in raw:
            source = build_source({"type": "reward_model", "model": body} if Path(body).expanduser().is_dir()
                                  else body, device, log)
            if not callable(getattr(source, "rewards", None)):
                raise ValueError(f"{spec!r} needs a scalar reward (a verifier or reward model), not "
                                 f"{type(source).__name__}")
            raw[body] = source.rewards(flat_prompts, flat_texts)
        if lsc is None:
            out[spec] = raw[body]
        else:
            r = raw[body].float()
            out[spec] = lsc_transform(r, candidate_references(r, prompts, groups, lsc.get("quantile", 0.5)))
    return out


def candidate_references(rewards: Tensor, prompts: Sequence[Text], groups: Sequence[Sequence[str]],
                         quantile: float) -> Tensor:
    """r_ref(x) of every candidate [candidates]: the ``quantile`` of ``rewards`` over its prompt's candidates."""
    by_prompt: dict[str, float] = {}
    out, start = [], 0
    for prompt, group in zip(prompts, groups, strict=True):
        key = prompt_key(prompt)
        if key not in by_prompt:
            by_prompt[key] = float(reference_point(rewards[start:start + len(group)], quantile))
        out += [by_prompt[key]] * len(group)
        start += len(group)
    return torch.tensor(out, dtype=torch.float32)


def pick(scores: Sequence[float], logps: Sequence[float | None]) -> int:
    """The highest score; ties go to the higher log-prob (best-of-N's rule), then to the first."""
    return max(range(len(scores)), key=lambda i: (scores[i], -math.inf if logps[i] is None else logps[i], -i))


def _ci(values: Tensor) -> dict[str, float]:
    x = values.detach().double().cpu().numpy()
    low, high = bootstrap_mean(x, 2000, seed=0)
    return {"mean": float(x.mean()), "ci_low": low, "ci_high": high}


def _rows(rows: Sequence[dict[str, Any]], source: str) -> tuple[list[Text], list[list[dict]]]:
    prompts, groups = [], []
    for i, row in enumerate(rows, 1):
        cands = row.get("candidates") if isinstance(row, dict) else None
        if "prompt" not in row or not isinstance(cands, list) or not cands or \
                not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in cands):
            raise ValueError(f"{source}, line {i}: needs 'prompt' and a non-empty 'candidates' list of objects with "
                             "'text' (the output of alignkit generate)")
        prompts.append(row["prompt"])
        groups.append(cands)
    return prompts, groups


def compare_selection(rows: Sequence[dict[str, Any]], selectors: Sequence[str], checks: Sequence[str],
                      device=None, log=print, source: str = "rows") -> dict[str, Any]:
    """Per selector, the share of prompts whose pick passes every check (reward > 0.5), each check's pass rate,
    the picks' mean word count, and the paired difference to the first selector, with 95% bootstrap CIs over
    prompts; next to two baselines: the first candidate (one sample, no selection) and any candidate (the best
    any selector could do)."""
    if not selectors or not checks:
        raise ValueError("give at least one selector (--select) and one check (--passes)")
    prompts, groups = _rows(rows, source)
    parsed = [parse_selector(text) for text in selectors]
    texts = [[c["text"] for c in g] for g in groups]
    flat_texts = [t for g in texts for t in g]
    rewards = term_rewards([*checks, *(spec for _, terms in parsed for _, spec in terms)], prompts, texts, device, log)

    def per_prompt(values: list[float]) -> list[list[float]]:
        out, start = [], 0
        for g in groups:
            out.append(values[start:start + len(g)])
            start += len(g)
        return out

    check_pass = {spec: per_prompt([float(v > 0.5) for v in rewards[spec].tolist()]) for spec in checks}
    passes_all = [[all(check_pass[s][i][j] for s in checks) for j in range(len(g))] for i, g in enumerate(groups)]
    n_words = per_prompt([float(len(words(t))) for t in flat_texts])

    def outcome(choice: list[int]) -> dict[str, Any]:
        hit = torch.tensor([float(passes_all[i][j]) for i, j in enumerate(choice)])
        return {"pass_all": _ci(hit), "per_check": {s: sum(check_pass[s][i][j] for i, j in enumerate(choice))
                                                    / len(choice) for s in checks},
                "words": sum(n_words[i][j] for i, j in enumerate(choice)) / len(choice), "_hit": hit}

    report: dict[str, Any] = {"prompts": len(groups), "candidates": sum(map(len, groups)), "checks": list(checks)}
    first = outcome([0] * len(groups))
    any_pass = torch.tensor([float(any(p)) for p in passes_all])
    report["baselines"] = {"first_candidate": {k: v for k, v in first.items() if k != "_hit"},
                           "any_candidate": {"pass_all": _ci(any_pass)}}
    report["selectors"], reference = {}, None
    logps = per_prompt([c.get("logp") for g in groups for c in g])
    for text, (name, terms) in zip(selectors, parsed, strict=True):
        total = torch.zeros(len(flat_texts))
        for weight, spec in terms:
            total += weight * rewards[spec].float()
        choice = [pick(s, lp) for s, lp in zip(per_prompt(total.tolist()), logps, strict=True)]
        result = outcome(choice)
        hit = result.pop("_hit")
        result["spec"] = body_of(text)
        if reference is None:
            reference = (name, hit)
        else:
            result[f"minus_{reference[0]}"] = _ci(hit - reference[1])
        report["selectors"][name] = result
    return report


def body_of(selector: str) -> str:
    return re.sub(r"\s+", "", selector.partition("=")[2])


__all__ = ["ALIASES", "Brevity", "Brief", "Correct", "candidate_references", "compare_selection", "length_prompts",
           "length_task", "parse_selector", "pick", "term_rewards"]
