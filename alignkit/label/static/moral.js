// The Moral Graph page: context -> values card -> wiser-than votes -> legitimacy questions.
"use strict";

let scenario = null;
let participant = "";
let context = "";
let edge = null;

function show(step, name) {
  document.querySelectorAll(".step").forEach(function (s) { s.hidden = s.id !== step; });
  setText("step-name", name);
  document.body.dataset.step = step;
}

function cardNode(card) {
  const list = el("ul");
  card.policies.forEach(function (p) { list.appendChild(el("li", {}, p)); });
  return [el("h3", {}, card.title), el("div", { class: "text" }, card.description || ""), list];
}

function fillCard(id, card) { document.getElementById(id).replaceChildren.apply(document.getElementById(id), cardNode(card)); }

async function guarded(work) {
  try { setText("status", ""); await work(); }
  catch (error) { setText("status", "error: " + error.message); }
}

function showEdge(next) {
  edge = next;
  if (next === null) return showLegitimacy();
  fillCard("from-card", next.from);
  fillCard("to-card", next.to);
  setText("story", next.story);
  setText("vote-progress", "(" + (next.done + 1) + " of " + next.total + ")");
  document.body.dataset.edge = next.edge;
  show("step-vote", "Step 3 of 4: wiser-than votes");
}

async function showLegitimacy() {
  const top = (await request("GET", "/api/moral/top?context=" + encodeURIComponent(context))).top;
  const box = document.getElementById("top-card");
  if (top) fillCard("top-card", top); else box.replaceChildren(el("p", {}, "No value is ranked yet."));
  const questions = document.getElementById("legitimacy-questions");
  questions.replaceChildren();
  scenario.legitimacy.forEach(function (q) {
    const row = el("div", { class: "choices" }, el("p", {}, q.text));
    [["yes", "Yes"], ["no", "No"], ["unsure", "Not sure"]].forEach(function (v) {
      const input = el("input", { type: "radio", name: "q-" + q.id, value: v[0], id: "q-" + q.id + "-" + v[0] });
      row.appendChild(el("label", { for: input.id }, input, " " + v[1]));
    });
    questions.appendChild(row);
  });
  show("step-legitimacy", "Step 4 of 4: was this fair?");
}

document.getElementById("btn-context").addEventListener("click", function () {
  guarded(async function () {
    participant = document.getElementById("participant").value.trim();
    const picked = document.querySelector("input[name=context]:checked");
    if (!participant || !picked) throw new Error("give your name and pick a situation");
    context = picked.value;
    await request("POST", "/api/moral/context", { participant: participant, context: context,
                                                  group: document.getElementById("group").value });
    show("step-card", "Step 2 of 4: your value");
  });
});

document.getElementById("btn-card").addEventListener("click", function () {
  guarded(async function () {
    const policies = document.getElementById("card-policies").value.split("\n").map(function (s) { return s.trim(); })
      .filter(function (s) { return s; });
    await request("POST", "/api/moral/card", { participant: participant, context: context, policies: policies,
      title: document.getElementById("card-title").value, description: document.getElementById("card-description").value });
    const next = await request("GET", "/api/moral/next?participant=" + encodeURIComponent(participant) +
                               "&context=" + encodeURIComponent(context));
    showEdge(next.next);
  });
});

function vote(value) {
  if (!edge || document.body.dataset.step !== "step-vote") return;
  guarded(async function () {
    const answer = await request("POST", "/api/moral/vote", { participant: participant, context: context,
                                                              edge: edge.edge, vote: value });
    await showEdge(answer.next);
  });
}

document.querySelectorAll("button[data-vote]").forEach(function (b) {
  b.addEventListener("click", function () { vote(b.dataset.vote); });
});
document.addEventListener("keydown", function (event) {
  if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") return;
  const value = { y: "yes", n: "no", "?": "unsure" }[event.key];
  if (value) vote(value);
});

document.getElementById("btn-legitimacy").addEventListener("click", function () {
  guarded(async function () {
    const answers = {};
    scenario.legitimacy.forEach(function (q) {
      const picked = document.querySelector("input[name='q-" + q.id + "']:checked");
      if (picked) answers[q.id] = picked.value;
    });
    await request("POST", "/api/moral/legitimacy", { participant: participant, context: context, answers: answers });
    show("step-done", "Done");
  });
});

guarded(async function () {
  scenario = await request("GET", "/api/moral/scenario");
  document.title = scenario.title;
  setText("title", scenario.title);
  setText("question", scenario.question);
  setText("context-question", scenario.context_question);
  document.getElementById("participant").value = param("participant");
  const contexts = document.getElementById("contexts");
  scenario.contexts.forEach(function (c) {
    const input = el("input", { type: "radio", name: "context", value: c.id, id: "context-" + c.id });
    contexts.appendChild(el("label", { for: input.id }, input, " " + c.text));
  });
  if (scenario.groups.length) {
    document.getElementById("group-box").hidden = false;
    scenario.groups.forEach(function (g) { document.getElementById("group").appendChild(el("option", { value: g }, g)); });
  }
  show("step-context", "Step 1 of 4: the situation");
});
