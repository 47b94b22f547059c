"""The subchat widget in a real browser: Voila serves notebook 03 on 127.0.0.1, headless Chromium
(Debian's package, driven by Playwright) opens a refinement attempt, branches from its feedback,
sends a hint through the echo backend, and checks what the page shows. Screenshots are saved
(into the test's folder, and into $KK_SCREENSHOT_DIR when set)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VOILA = Path(sys.executable).parent / "voila"
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (.ci/run does)"),
    pytest.mark.skipif(not VOILA.exists(), reason="voila is not installed (the dev extra installs it)"),
]
# What this machine's closed network needs: no sandbox as root, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def attempt_tree(folder: Path):
    """A two-round refinement of relu written with the real writer: a compile error, then a correct kernel."""
    from kaggle_kit.experiment import ExperimentConfig
    from kaggle_kit.experiment.generate import Job, make_record
    from kaggle_kit.experiment.refine import open_attempts, write_attempts
    from kernels_eval.problems import load_problems
    from kernels_eval.prompts import build_messages
    from kernels_eval.records import Candidate, EvaluatedRecord, Evaluation
    from kernels_eval.result import KernelEvalResult, Status

    relu = load_problems(names=["relu"])[0]
    cfg = ExperimentConfig(experiment_name="demo", out_dir=str(folder), device="cpu", problems=["relu"], refine_rounds=2)
    g1 = make_record(cfg, Job(relu, 0, build_messages(relu, "cpu")),
                     [Candidate(0, "```python\nreturn x }\n```", 0.61), Candidate(1, "I would tile it.", 0.55)])
    e1 = EvaluatedRecord(g1.key, 0, [
        Evaluation(0, "ok", KernelEvalResult("01_relu", Status.COMPILE_ERROR, message='main.cpp(2): error: expected a ";"')),
        Evaluation(1, "no_code", KernelEvalResult("01_relu", Status.NO_CODE, message="no_code"))])
    g2 = make_record(cfg, Job(relu, 0, [], round=2, parent=g1.key, parent_candidate=0, branch="0"),
                     [Candidate(0, "```python\nfixed\n```", 0.7)])
    e2 = EvaluatedRecord(g2.key, 0, [Evaluation(0, "ok", KernelEvalResult(
        "01_relu", Status.CORRECT, correct=True, speedup=1.21, runtime_ms=0.1, ref_runtime_ms=0.121))])
    store = open_attempts(cfg.folder)
    assert write_attempts(store, cfg, {g1.key: g1, g2.key: g2}, {g1.key: e1, g2.key: e2}) == 3
    return cfg.folder


@pytest.fixture
def voila(tmp_path):
    from fake_servers import free_port
    from kaggle_kit.workflow.notebooks import NOTEBOOKS, inject

    run = attempt_tree(tmp_path)
    nb = inject(NOTEBOOKS / "03_subchat.ipynb", {"backend": "echo", "out_dir": str(run)}, tmp_path / "subchat.ipynb")
    port = free_port()
    proc = subprocess.Popen([str(VOILA), str(nb), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        yield url, run
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_open_an_attempt_branch_from_its_feedback_and_send_a_hint(voila, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from kaggle_kit.subchat.store import open_store

    url, run = voila
    shots = [tmp_path / "attempt.png", tmp_path / "hint.png"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(url, timeout=120_000)
            page.wait_for_selector("select", timeout=120_000)  # the widget rendered, its kernel connected
            options = page.eval_on_selector("select", "s => Array.from(s.options).map(o => o.text.replace(/\\s+/g, ' ').trim())")
            assert options == ["demo · 01_relu (1)", "└ sample 0 · candidate 0 · compile_error (2)",
                               "└ round 2 · candidate 0 · correct 1.21x (2)",
                               "└ sample 0 · candidate 1 · no_code (2)"]

            page.select_option("select", index=2)  # the refinement: its code, and what it changed
            page.locator("details.kk-diff").wait_for(timeout=30_000)
            crumb = page.locator("h4").first.inner_text()
            assert crumb == "demo · 01_relu › sample 0 · candidate 0 · compile_error › round 2 · candidate 0 · correct 1.21x"
            page.locator("details.kk-diff summary").click()
            diff = page.locator("details.kk-diff pre").inner_text()
            assert "-return x }" in diff and "+fixed" in diff

            page.select_option("select", index=1)  # open the failed attempt: why did it fail?
            page.get_by_text("did not compile").wait_for(timeout=30_000)
            assert page.get_by_text('error: expected a ";"').count() == 1
            assert page.locator(".kk-badge", has_text="compile_error").count() == 2  # on the answer and the feedback
            code = page.locator("pre.kk-code").first  # the answer's fence: a monospace block, highlighted
            assert "```" not in code.inner_text() and code.inner_text().strip() == "return x }"
            assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily")
            assert page.locator("pre.kk-code .kk-kw", has_text="return").count() == 1
            assert page.locator("details.kk-diff").count() == 0  # a first attempt answers no earlier one
            page.screenshot(path=str(shots[0]), full_page=True)

            page.get_by_role("button", name="branch here").last.click()  # branch from the feedback
            page.wait_for_function("() => document.querySelectorAll('select option').length == 5", timeout=30_000)
            page.wait_for_function("() => document.querySelector('h4').innerText.includes('branch at #')", timeout=30_000)
            crumb = page.locator("h4").first.inner_text()  # the parent's label once, then the branch's own
            assert crumb.count("compile_error") == 1 and crumb.startswith("demo · 01_relu › sample 0 · candidate 0")
            page.fill("textarea", "Hint: put a semicolon after return x.")
            page.get_by_role("button", name="Send").click()
            page.get_by_text("Echo: Hint: put a semicolon after return x.").wait_for(timeout=30_000)
            assert page.get_by_text("answered by echo").count() == 1
            page.screenshot(path=str(shots[1]), full_page=True)
        finally:
            browser.close()

    store = open_store(run / "attempts.sqlite")  # what the page did is in the database
    (attempt,) = store.find(attempt="01_relu|0|online_bon|1#0")
    (hint,) = [c for c in attempt.children() if not c.meta]
    assert [m.content for m in hint.messages] == ["Hint: put a semicolon after return x.",
                                                  "Echo: Hint: put a semicolon after return x."]
    assert [m["role"] for m in hint.context()] == ["system", "user", "assistant", "user", "user", "assistant"]
    for shot in shots:
        assert shot.stat().st_size > 10_000
        if os.environ.get("KK_SCREENSHOT_DIR"):
            Path(os.environ["KK_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(os.environ["KK_SCREENSHOT_DIR"]) / shot.name)


@pytest.mark.vllm
def test_the_step_tree_of_a_served_tts_request_in_the_browser(registered, tmp_path):
    """A beam search answered by the service, opened as its step tree (GET /v1/tts/{request_id}/tree):
    the chosen path is the answer's steps, the rest expanded, finished or pruned, each with its score."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    import kaggle_kit as kk

    srv = kk.serve(port=0)
    try:
        from kernels_eval.problems import load_problems
        from kernels_eval.prompts import build_messages

        prompt = build_messages(load_problems(names=["row_sum"])[0], "cpu")  # where the tiny model branches
        # A search whose tree has pruned steps too: vLLM on CPU samples differently across machines (its
        # AVX2 and AVX-512 builds), so the first seed whose beam search pruned something is the one shown.
        for seed in range(3, 11):
            r = httpx.post(f"{srv.url}/chat/completions", timeout=300, json={
                "model": "tiny", "messages": prompt, "max_tokens": 300, "seed": seed, "temperature": 1.0,
                "tts_strategy": "beam_search", "tts_beam_size": 2, "tts_candidates_per_step": 4, "tts_max_steps": 6})
            assert r.status_code == 200, r.text
            rid, chosen_steps = r.headers["X-Request-Id"], r.json()["tts_metadata"]["steps"]
            if "kk-pruned" in httpx.get(f"{srv.url}/tts/{rid}/tree", timeout=30).text:
                break
        assert httpx.get(f"{srv.url}/tts/nope/tree", timeout=30).status_code == 404
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.goto(f"{srv.url}/tts/{rid}/tree", timeout=60_000)
                page.wait_for_selector(".kk-step-tree")
                fates = page.eval_on_selector_all("li.kk-step", "ls => ls.map(l => l.className.split(' ')[1])")
                assert fates.count("kk-chosen") == len(chosen_steps) >= 1
                assert "kk-pruned" in fates and "kk-expanded" in fates  # beam search kept some steps, not all
                chosen = page.locator("li.kk-chosen > details > pre")
                assert chosen.first.is_visible() and chosen.first.inner_text().strip() == chosen_steps[0]["text"].strip()
                assert "beam_search" in page.locator("h3").inner_text()
                page.screenshot(path=str(tmp_path / "tree.png"), full_page=True)
            finally:
                browser.close()
    finally:
        srv.stop()
    if os.environ.get("KK_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "tree.png", Path(os.environ["KK_SCREENSHOT_DIR"]) / "tree.png")
