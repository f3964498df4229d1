import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.report import ReportError, write_report

REPO_ROOT = Path(__file__).resolve().parents[2]
XSS = "<script>window.__pwned = 1; console.error('injected')</script>"

CONFIG_YAML = """\
# resolved config
model: smollm2-135m-instruct
objective:
  name: dpo
  beta: 0.1
data:
  path: data/prefs.jsonl
  chat_template_pad: "<|im_end|> & <pad>"
train:
  lr: 5.0e-7
  steps: 60
"""


def make_run_dir(root: Path, parquet: bool = True) -> Path:
    run = root / "run-dpo"
    (run / "eval").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for step in range(1, 61):
        t = step / 60
        lines.append({
            "step": step, "split": "train", "loss": 0.69 - 0.3 * t + 0.02 * rng.standard_normal(),
            "rewards/accuracies": 0.5 + 0.35 * t, "rewards/margins": 0.8 * t, "rewards/chosen": 0.1 * t,
            "rewards/rejected": -0.7 * t, "logps/chosen": -80 - 3 * t, "logps/rejected": -90 - 10 * t,
            "learning_rate": 5e-7 * min(1.0, step / 10), "grad_norm": 3.0 * math.exp(-t),
            "tokens_per_second": 1500 + 50 * rng.standard_normal(), "note": "text is ignored",
            "maybe": None,
        })
        if step % 10 == 0:
            lines.append({"step": step, "split": "eval", "loss": 0.7 - 0.25 * t,
                          "rewards/accuracies": 0.5 + 0.3 * t, "rewards/margins": 0.7 * t,
                          "ranking_accuracy": 0.31 + 0.01 * t, "kl": 0.05 * t})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "config.yaml").write_text(CONFIG_YAML)
    samples = [
        {"prompt": f"Question {i}: what is {i} + {i}?", "before": f"It is {2 * i + 1}.",
         "after": f"It is {2 * i}.", "verified_before": False, "verified_after": True}
        for i in range(3)
    ]
    samples.append({"prompt": f"Please echo {XSS}", "before": "no", "after": f"{XSS} & <b>bold?</b>"})
    (run / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    n = 200
    ref_c, ref_r = rng.normal(-100, 15, n), rng.normal(-100, 15, n)
    lc, lr = ref_c + rng.normal(0.5, 2, n), ref_r + rng.normal(-0.5, 2, n)
    table = {
        "logp_chosen": lc, "logp_rejected": lr, "ref_logp_chosen": ref_c, "ref_logp_rejected": ref_r,
        "margin": 0.1 * ((lc - ref_c) - (lr - ref_r)), "difficulty": ref_r - ref_c, "correct": lc > lr,
    }
    if parquet:
        pq.write_table(pa.table(table), run / "eval" / "per_example.parquet")
    else:
        rows = [{k: (bool(v[i]) if k == "correct" else float(v[i])) for k, v in table.items()}
                for i in range(n)]
        (run / "eval" / "per_example.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    summary = {"ranking_accuracy": float(np.mean(lc > lr)), "idealized_ranking_accuracy": 0.93,
               "alignment_gap": 0.6, "flipped": {"share": 0.04, "n_misranked": 90}, "model": "<tiny>"}
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return run


# --------------------------------------------------------------------------------------------------
# Content checks (no browser)
# --------------------------------------------------------------------------------------------------


def test_report_content_and_escaping(tmp_path):
    run = make_run_dir(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    text = out.read_text()
    # Self-contained: no external URLs and no script at all; CSP forbids loading anything.
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "<script" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert "&lt;script&gt;window.__pwned" in text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in text
    # Config verbatim (escaped), summary flattened, eval table read.
    assert "chat_template_pad: &quot;&lt;|im_end|&gt; &amp; &lt;pad&gt;&quot;" in text
    assert "flipped/share" in text and "&lt;tiny&gt;" in text
    assert "200 examples" in text
    imgs = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', text)
    assert any(a.startswith("Loss") for a in imgs) and any(a.startswith("Rewards") for a in imgs)
    assert any("ranking_accuracy" in a for a in imgs)
    assert any(a.startswith("Per-example") for a in imgs)
    assert "Ranking accuracy by difficulty bin" in imgs
    assert "verified: ✓" in text and "verified: ✗" in text
    plotted = " ".join(imgs)
    assert "note" not in plotted and "maybe" not in plotted  # string / null values are not plotted


def test_report_jsonl_eval_table_and_custom_paths(tmp_path):
    run = make_run_dir(tmp_path, parquet=False)
    table = run / "eval" / "per_example.jsonl"
    moved = tmp_path / "elsewhere" / "table.jsonl"
    moved.parent.mkdir()
    shutil.move(table, moved)
    shutil.move(run / "eval" / "summary.json", moved.parent / "summary.json")
    out = write_report(run, out_path=tmp_path / "out" / "r.html", eval_table=moved)
    text = out.read_text()
    assert out.parent.name == "out"
    assert "200 examples" in text and "alignment_gap" in text
    with pytest.raises(FileNotFoundError):
        write_report(run, eval_table=tmp_path / "missing.parquet")


def test_report_missing_pieces_are_noted(tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    text = write_report(run).read_text()
    for what in ("training metrics", "evaluation summary", "per-example evaluation", "samples", "config"):
        assert f"No {what}" in text
    assert "<img" not in text


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"step": 3, "split": "train", "loss": 0.5', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"split": "train", "loss": 0.5}', "'step' must be an integer"),
        ('{"step": 4, "split": 7}', "'split' must be a string"),
    ],
)
def test_malformed_metrics_line_names_file_and_line(tmp_path, bad_line, message):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps({"step": 1, "split": "train", "loss": 0.7})
    (run / "metrics.jsonl").write_text(f"{good}\n\n{good}\n{bad_line}\n{good}\n")
    with pytest.raises(ReportError, match=message) as info:
        write_report(run)
    assert f"{run / 'metrics.jsonl'}:4:" in str(info.value)


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps({"step": 1, "split": "train", "loss": 0.7})
    (run / "metrics.jsonl").write_text(f"{good}\n{good}\n" + '{"step": 3, "split": "tr')  # killed mid-append
    text = write_report(run).read_text()  # before: ReportError for the torn line
    assert "No training metrics" not in text and "<img" in text


# --------------------------------------------------------------------------------------------------
# Real headless browser
# --------------------------------------------------------------------------------------------------

CHECK_NONCE = "alignkit-check"
# Installed first thing in <head> of a test copy of the report: records errors from any source, then after
# load reports image health into the DOM so `--dump-dom` can read it back.
HARNESS = """
<script id="alignkit-harness" nonce="@NONCE@">
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? 'resource failed: ' + (t.outerHTML || '').slice(0, 120)
                                         : 'error: ' + e.message);
}, true);
window.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI);
});
var origError = console.error;
console.error = function () {
  window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return origError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var result = {
    n_images: imgs.length,
    images_ok: imgs.every(function (i) { return i.complete && i.naturalWidth > 0; }),
    widths: imgs.map(function (i) { return i.naturalWidth; }),
    errors: window.__errors,
    pwned: window.__pwned === 1,
    foreign_scripts: document.querySelectorAll('script:not(#alignkit-harness)').length,
    sample_text: (document.querySelector('table.samples') || {}).textContent || ''
  };
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>
""".replace("@NONCE@", CHECK_NONCE)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("ALIGNKIT_SKIP_BROWSER") == "1":
        pytest.skip("ALIGNKIT_SKIP_BROWSER=1")
    pytest.fail("chromium is not installed: run `make test` (it installs chromium), "
                "or set ALIGNKIT_SKIP_BROWSER=1 to skip the browser test")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path):
    if os.environ.get("ALIGNKIT_SKIP_BROWSER") == "1":
        pytest.skip("ALIGNKIT_SKIP_BROWSER=1")
    binary = chromium_binary()
    report = write_report(make_run_dir(tmp_path))
    text = report.read_text()

    # The harness needs to run under the report's own CSP, so it is allowed by nonce only: the report's
    # other rules (no external loads, no other scripts) stay in force for the check.
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', text).group(1)
    harnessed = text.replace(csp, f"{csp}; script-src 'nonce-{CHECK_NONCE}'", 1)
    harnessed = harnessed.replace("<head>", "<head>" + HARNESS, 1)
    check_page = tmp_path / "check.html"
    check_page.write_text(harnessed)

    proc = run_chromium(binary, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom",
                        check_page.as_uri())
    match = re.search(r'<pre id="check">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no check result in DOM dump (rc={proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    import html as _html

    result = json.loads(_html.unescape(match.group(1)))
    assert result["errors"] == []
    assert result["n_images"] >= 5
    assert result["images_ok"], result["widths"]
    assert result["pwned"] is False and result["foreign_scripts"] == 0
    assert XSS in result["sample_text"]  # shown as text, not executed

    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    proc = run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,4000",
                        "--virtual-time-budget=5000", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot; stderr:\n{proc.stderr[-3000:]}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
