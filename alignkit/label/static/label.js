// The labelling page: show the pair, send the decision, move on only once the server has it on disk.
"use strict";

const annotator = param("annotator");
let current = null;   // the state the server sent last
let busy = false;

function render(state) {
  current = state;
  setText("annotator", "annotator: " + state.annotator);
  const p = state.progress;
  setText("progress-text", p.done + " / " + p.total + " labelled · " + p.per_minute + " labels/min");
  document.getElementById("progress-bar").style.width = (p.total ? 100 * p.done / p.total : 0) + "%";
  document.getElementById("agreement-box").hidden = !state.agreement_slider;
  document.getElementById("btn-undo").disabled = !state.can_undo;
  const finished = state.pair === null;
  document.getElementById("main").hidden = finished;
  document.getElementById("finished").hidden = !finished;
  document.body.dataset.pairId = finished ? "" : state.pair.pair_id;
  if (finished) return;
  const prompt = document.getElementById("prompt");
  prompt.replaceChildren();
  state.pair.messages.forEach(function (m) {
    prompt.appendChild(el("div", { class: "turn " + m.role }, el("span", { class: "role" }, m.role), el("div", { class: "text" }, m.content)));
  });
  setText("left", state.pair.left);
  setText("right", state.pair.right);
  document.getElementById("reason").value = "";
  document.getElementById("agreement").value = 75;
  setText("agreement-value", "75%");
}

async function call(method, url, body) {
  if (busy) return;
  busy = true;
  document.body.classList.add("busy");
  try {
    render(await request(method, url, body));
    setText("status", "");
  } catch (error) {
    setText("status", "error: " + error.message);
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function decide(decision) {
  if (!current || !current.pair) return;
  const body = { annotator: annotator, pair_id: current.pair.pair_id, decision: decision,
                 reason: document.getElementById("reason").value };
  if (current.agreement_slider && (decision === "left" || decision === "right")) {
    body.agreement = Number(document.getElementById("agreement").value) / 100;
  }
  call("POST", "/api/label/decide", body);
}

function undo() { call("POST", "/api/label/undo", { annotator: annotator }); }

const KEYS = { "1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "3": "tie", "t": "tie",
               "4": "both_bad", "x": "both_bad", "5": "skip", "s": "skip" };

document.addEventListener("keydown", function (event) {
  const typing = event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT";
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (KEYS[event.key]) { event.preventDefault(); decide(KEYS[event.key]); }
  else if (event.key === "u" || event.key === "U") { event.preventDefault(); undo(); }
});

document.querySelectorAll("button[data-decision]").forEach(function (button) {
  button.addEventListener("click", function () { decide(button.dataset.decision); });
});
document.getElementById("btn-undo").addEventListener("click", undo);
document.getElementById("btn-undo-finished").addEventListener("click", undo);
document.getElementById("agreement").addEventListener("input", function (event) {
  setText("agreement-value", event.target.value + "%");
});

call("GET", "/api/label/state?annotator=" + encodeURIComponent(annotator));
