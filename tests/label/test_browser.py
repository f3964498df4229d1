"""End to end in headless Chromium: label ten pairs with keys and clicks, kill the server mid-session, restart,
nothing lost or shown twice, markup shown as text, the labels train a tiny model; a two-participant Moral
Graph session gives the expected PageRank order."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest

from alignkit.data import load_records
from alignkit.io import read_jsonl
from alignkit.label.moral_graph import load_scenario, pagerank
from alignkit.label.moral_report import export
from tests.label.browser import Server, chrome

SAMPLE = Path(__file__).resolve().parents[2] / "alignkit" / "label" / "samples" / "moral_scenario.yaml"
EDGE_SHOWN = "return document.body.dataset.step === 'step-vote' && document.body.dataset.edge"
XSS = "<script>window.__pwned = 1</script><b>bold</b> & done"


@pytest.fixture(scope="module")
def driver():
    session = chrome()
    yield session
    session.quit()


def wait(driver, condition):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, 60, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:  # say what the page shows
        state = driver.execute_script("return JSON.stringify([document.body.dataset, document.body.className, "
                                      "(document.getElementById('status') || {}).textContent])")
        raise AssertionError(f"the page did not get there; body data, class, status: {state}") from None


def by_id(driver, name):
    return driver.find_element("id", name)


class Labeller:
    """Drives the labelling page and remembers what it showed."""

    def __init__(self, driver) -> None:
        self.driver, self.shown, self.seen = driver, [], {}

    def pair_id(self) -> str | None:
        return self.driver.execute_script("return document.body.classList.contains('busy') ? null : "
                                          "(document.body.dataset.pairId === undefined ? null : "
                                          "document.body.dataset.pairId)")

    def wait_new(self, previous: str | None) -> str:
        """The next pair id ('' once all are done), recorded with the texts shown."""
        pid = wait(self.driver, lambda d: [p] if (p := self.pair_id()) is not None and p != previous else False)[0]
        self.shown.append(pid)
        if pid:
            self.seen[pid] = (by_id(self.driver, "left").text, by_id(self.driver, "right").text)
        return pid

    def keys(self, key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(key).perform()

    def decide(self, how, decisions: dict, decision: str | None) -> str:
        current = self.shown[-1]
        how()
        if decision is not None:
            decisions[current] = decision
        return self.wait_new(current)


def test_label_kill_restart_resume_and_train(tmp_path, driver, tokenizer):
    from selenium.webdriver.common.keys import Keys

    rows = [{"prompt": f"Question {i}: what is {i} + {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"It is {2 * i + 1}."} for i in range(10)]
    rows[0] = {"prompt": "Please echo <img src=x onerror=window.__pwned=2>", "chosen": XSS, "rejected": "No."}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "labels.jsonl"
    server = Server("label", pairs, "--out", out, "--annotator", "ann1", "--agreement", log=tmp_path / "log").start()
    page, decisions = Labeller(driver), {}
    try:
        driver.get(server.url + "/")
        page.wait_new(None)
        # untrusted text is shown as text: no script ran, no element was made from it
        assert XSS in page.seen[page.shown[0]]
        assert "<img src=x" in by_id(driver, "prompt").text
        assert driver.execute_script("return window.__pwned === undefined")
        assert driver.find_elements("css selector", "#left *, #right *, #prompt img") == []

        page.decide(lambda: page.keys("1"), decisions, "left")
        by_id(driver, "reason").send_keys("B is right")
        page.decide(lambda: by_id(driver, "btn-right").click(), decisions, "right")
        page.decide(lambda: page.keys("3"), decisions, "tie")
        by_id(driver, "reason").send_keys("both wrong")
        undone = page.shown[-1]
        displaced = page.decide(lambda: by_id(driver, "btn-both_bad").click(), decisions, None)
        assert page.decide(lambda: page.keys("u"), decisions, None) == undone  # the undone pair comes back
        page.decide(lambda: page.keys("5"), decisions, "skip")
        by_id(driver, "agreement").send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)  # 75% -> 85%
        page.decide(lambda: by_id(driver, "btn-left").click(), decisions, "left")
        mid_pair = page.shown[-1]
    finally:
        server.kill()  # SIGKILL mid-session, a pair on screen

    labelled = {r["pair_id"]: r for r in read_jsonl(out) + read_jsonl(tmp_path / "labels.other.jsonl")}
    assert {p: r["decision"] for p, r in labelled.items()} == decisions  # nothing lost, the undo held
    server.start()  # the same command on the same port
    try:
        driver.refresh()
        page.shown.pop()  # the pair on screen when the server died was never labelled: it may come again
        assert page.wait_new(None) == mid_pair
        steps = ((lambda: page.keys(Keys.ARROW_LEFT), "left"), (lambda: page.keys(Keys.ARROW_RIGHT), "right"),
                 (lambda: by_id(driver, "btn-left").click(), "left"), (lambda: page.keys("2"), "right"),
                 (lambda: page.keys("4"), "both_bad"))
        for how, decision in steps:
            page.decide(how, decisions, decision)
        assert by_id(driver, "finished").is_displayed()
    finally:
        server.kill()

    assert page.shown[-1] == ""  # the "all done" page
    counts = collections.Counter(p for p in page.shown if p)
    # shown twice: only the undone pair, and the pair the undo took off the screen before it was labelled
    assert len(counts) == 10 and {p for p, n in counts.items() if n > 1} == {undone, displaced}
    preferences = load_records(out, log=None).records
    assert len(preferences) == 7 == sum(d in ("left", "right") for d in decisions.values())
    for record in preferences:
        left, right = page.seen[record.metadata["pair_id"]]
        decision = decisions[record.metadata["pair_id"]]
        assert (record.chosen, record.rejected) == ((left, right) if decision == "left" else (right, left))
        assert record.metadata["annotator"] == "ann1" and 0.5 <= record.metadata["agreement"] <= 1
    assert sorted(r.metadata["agreement"] for r in preferences).count(0.85) == 1
    judgments = load_records(tmp_path / "labels.judgments.jsonl", kind="judgment", log=None).records
    assert [j.judgment for j in judgments] == ["B is right"]

    from alignkit.models import tiny_llama
    from alignkit.train.config import load_config
    from alignkit.train.loop import train

    config = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.train={out}", "data.eval_fraction=0",
                                "model.device=cpu", "progress=false", "lora.enabled=false", "batch_size=2",
                                "max_steps=1", "eval_every=0", "save_every=0"])
    result = train(config, model=tiny_llama(tokenizer), tokenizer=tokenizer, log=lambda m: None)
    steps = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["step"] == 1 and math.isfinite(steps[0]["loss"])


def test_moral_graph_two_participants(tmp_path, driver):
    out = tmp_path / "elicitation"
    server = Server("moral-graph", "serve", SAMPLE, "--out", out, log=tmp_path / "log").start()
    votes = {"p1": ["yes", "yes", "unsure"], "p2": ["yes", "no", "yes"]}
    legitimacy = {"p1": ("yes", "no", "yes"), "p2": ("yes", "yes", "unsure")}
    try:
        for participant, group in (("p1", "left-leaning"), ("p2", "right-leaning")):
            driver.get(f"{server.url}/moral?participant={participant}")
            wait(driver, lambda d: d.execute_script("return document.body.dataset.step") == "step-context")
            by_id(driver, "context-family-choice").click()
            by_id(driver, "group").send_keys(group)
            by_id(driver, "btn-context").click()
            wait(driver, lambda d: d.execute_script("return document.body.dataset.step") == "step-card")
            by_id(driver, "card-title").send_keys(f"Honest care ({participant})")
            by_id(driver, "card-policies").send_keys("MOMENTS to ask before advising\nFEARS beneath the question")
            by_id(driver, "btn-card").click()
            edges: list[str] = []
            for value in votes[participant]:
                edge = wait(driver, lambda d, seen=tuple(edges): (lambda e: e if e and e not in seen else False)(
                    d.execute_script(EDGE_SHOWN)))
                edges.append(edge)
                by_id(driver, f"vote-{value}").click()
            wait(driver, lambda d: d.execute_script("return document.body.dataset.step") == "step-legitimacy")
            if participant == "p1":  # live PageRank after p1's votes already puts curious support first
                assert "Curious support" in by_id(driver, "top-card").text
            for question, answer in zip(("fair", "captures_mine", "legitimate"), legitimacy[participant], strict=True):
                by_id(driver, f"q-{question}-{answer}").click()
            by_id(driver, "btn-legitimacy").click()
            wait(driver, lambda d: d.execute_script("return document.body.dataset.step") == "step-done")
    finally:
        server.kill()

    summary = json.loads(export(load_scenario(SAMPLE), out)["json"].read_text())
    family = summary["contexts"][0]
    # protective -> curious: 2 yes (kept, agreement 1); respect -> curious: 1 yes 1 no (dropped);
    # protective -> respect: 1 yes 1 unsure (kept, agreement 0.5). Curious support first, then respect.
    expected = pagerank([n["id"] for n in family["nodes"]], {("protective-honesty", "curious-support"): 1.0,
                                                            ("protective-honesty", "respect-for-agency"): 0.5})
    assert [n["id"] for n in family["nodes"]][:2] == ["curious-support", "respect-for-agency"]
    assert {n["id"]: n["pagerank"] for n in family["nodes"]} == pytest.approx(expected)
    assert {n["id"] for n in family["nodes"]} >= {"p1:1", "p2:1"}  # the participants' own cards
    shares = {q["id"]: q["yes_share"] for q in summary["legitimacy"]}
    assert shares == {"fair": 1.0, "captures_mine": 0.5, "legitimate": 1.0}
    by_group = {q["id"]: q["by_group"] for q in summary["legitimacy"]}["captures_mine"]
    assert by_group == {"left-leaning": 0.0, "right-leaning": 1.0}
