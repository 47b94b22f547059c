"""The HTML views: messages with their code, and a search's step tree (the browser tests look at them
rendered; these check what they say)."""
from kernels_eval.records import Candidate, GeneratedRecord

import kaggle_kit as kk
from kaggle_kit.pages import markdown, step_tree

# A beam of 2 over 3 steps: 0 -> {1, 2}; 1 -> {3 (chosen, ends)}, 2 -> {4 (ends, lost)}; 5 pruned at step 2.
ROWS = [{"id": 0, "parent": None, "depth": 0, "score": 0.9, "path_score": 0.9, "num_tokens": 5, "finish": "boundary",
         "selected": True, "text": "```python\nimport torch"},
        {"id": 1, "parent": 0, "depth": 1, "score": 0.8, "path_score": 0.8, "num_tokens": 4, "finish": "boundary",
         "selected": True, "text": "x = 1"},
        {"id": 2, "parent": 0, "depth": 1, "score": 0.7, "path_score": 0.7, "num_tokens": 4, "finish": "boundary"},
        {"id": 3, "parent": 1, "depth": 2, "score": 0.95, "path_score": 0.8, "num_tokens": 2, "finish": "eos",
         "selected": True, "text": "return x"},
        {"id": 4, "parent": 2, "depth": 2, "score": 0.6, "path_score": 0.6, "num_tokens": 2, "finish": "eos"},
        {"id": 5, "parent": 0, "depth": 1, "score": 0.2, "path_score": 0.2, "num_tokens": 3, "finish": "boundary"}]


def test_every_step_has_its_fate():
    assert step_tree.fates(ROWS) == {0: "chosen", 1: "chosen", 2: "expanded", 3: "chosen", 4: "finished", 5: "pruned"}
    page = step_tree.page(ROWS, "t")
    assert page.count("class='kk-step kk-") == 6 and "chosen 3" in page and "pruned 1" in page
    assert "<span class='kk-kw'" in page  # step texts render as code


def test_a_runs_record_opens_as_its_tree_without_step_texts():
    rows = [{k: v for k, v in r.items() if k != "text"} for r in ROWS]
    g = GeneratedRecord("01_relu|0|beam_search|1", "01_relu", 0, "beam_search", "perplexity", 0,
                        [Candidate(0, "a"), Candidate(1, "b")], steps=rows, tts={"aggregated_score": 0.8})
    html = kk.step_tree.tree_html(g)
    assert "item 01_relu|0|beam_search|1" in html and html.count("(text not kept)") == 6
    assert "scorer perplexity" in html


def test_markdown_keeps_code_apart_from_prose():
    out = markdown.to_html("Use `x<y`:\n```cpp\nint a = 1; // one\n```\nDone <b>.")
    assert "<code style='font-family:monospace;background:#f6f8fa'>x&lt;y</code>" in out
    assert "<pre class='kk-code'" in out and "class='language-cpp'" in out and "&lt;b&gt;" in out
    assert "<span class='kk-com' style='color:#6a737d'>// one</span>" in out
    assert markdown.code_of("a\n```python\nold\n```\nb\n```python\nnew\n```") == "new\n"
    diff = markdown.diff_html("```python\nreturn x }\n```", "```python\nreturn x;\n```")
    assert "-return x }" in diff and "+return x;" in diff and markdown.diff_html("same", "same") == ""
