"""A TTS search as its tree of steps: every scored step, its score, and what became of it.

    kk.pages.step_tree.show(result)     # in a notebook: a StrategyResult, or a run's GeneratedRecord
    GET /v1/tts/{request_id}/tree       # the service: the same page for a request it answered

A step is `chosen` (on the answer's path), `finished` (ends a candidate that lost), `expanded` (kept:
the search continued from it) or `pruned` (dropped when the search kept others, or stopped for low
confidence by deepconf's early stop). Step texts render
as code like the chat widget's (a run's records keep the tree without step texts: "(text not kept)").
"""
from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

from kaggle_kit.pages.markdown import CODE_STYLE, highlight

ENDS = ("eos", "stop", "length", "context")
STYLE = {  # fate -> (label colour, border)
    "chosen": ("#22863a", "3px solid #22863a"),
    "finished": ("#005cc5", "1px solid #79b8ff"),
    "expanded": ("#586069", "1px solid #d1d5da"),
    "pruned": ("#b31d28", "1px dashed #f97583"),
}


def rows_of(x: Any) -> tuple[list[dict], dict[str, Any]]:
    """(tree rows, summary) of a StrategyResult, a GeneratedRecord, or rows already."""
    if hasattr(x, "tree") and hasattr(x, "to_dict"):  # a StrategyResult
        d = x.to_dict(include_tree=True)
        return d["tree"], {"strategy": d["strategy"], "scorer": d["scorer"], "score": d["aggregated_score"],
                           "candidates": len(d["candidates"]), "reason": d["completion_reason"]}
    if hasattr(x, "steps") and hasattr(x, "candidates"):  # a run's GeneratedRecord
        return list(x.steps), {"strategy": x.strategy, "scorer": x.scorer, "item": x.key,
                               "candidates": len(x.candidates), "score": (x.tts or {}).get("aggregated_score")}
    return list(x), {}


def fates(rows: list[dict]) -> dict[int, str]:
    children = defaultdict(list)
    for r in rows:
        children[r.get("parent")].append(r["id"])
    out = {}
    for r in rows:
        if r.get("selected"):
            out[r["id"]] = "chosen"
        elif children.get(r["id"]):
            out[r["id"]] = "expanded"
        elif r.get("finish") in ENDS:
            out[r["id"]] = "finished"
        else:
            out[r["id"]] = "pruned"
    return out


def _num(x, fmt=".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and x == x else "–"


def tree_html(x: Any, title: str = "TTS step tree") -> str:
    """The tree as one HTML fragment (nested lists, each step a foldable box)."""
    rows, summary = rows_of(x)
    fate = fates(rows)
    children = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        children[r.get("parent")].append(r)

    def node(r: dict) -> str:
        f = fate[r["id"]]
        color, border = STYLE[f]
        head = (f"<b style='color:{color}'>{f}</b> · step {r.get('depth', 0) + 1} · score {_num(r.get('score'))}"
                f" · path {_num(r.get('path_score'))} · {r.get('num_tokens', '?')} tokens · {html.escape(str(r.get('finish')))}")
        text = r.get("text")
        body = (f"<pre style='{CODE_STYLE}'>{highlight(text)}</pre>" if text
                else "<i style='color:#888'>(text not kept)</i>")
        kids = "".join(node(c) for c in children.get(r["id"], []))
        return (f"<li class='kk-step kk-{f}' data-id='{r['id']}' style='list-style:none;margin:4px 0;padding:4px 8px;"
                f"border-left:{border}'><details{' open' if f == 'chosen' else ''}><summary>{head}</summary>{body}"
                f"</details>{f'<ul style=padding-left:18px>{kids}</ul>' if kids else ''}</li>")

    counts = {k: sum(1 for v in fate.values() if v == k) for k in STYLE}
    facts = " · ".join(f"{k} {html.escape(str(v))}" for k, v in summary.items() if v is not None)
    legend = " · ".join(f"<span style='color:{STYLE[k][0]}'>{k} {n}</span>" for k, n in counts.items())
    roots = "".join(node(r) for r in children.get(None, []))
    return (f"<div class='kk-step-tree' style='font-family:system-ui,sans-serif;font-size:13px'>"
            f"<h3 style='margin:4px 0'>{html.escape(title)}</h3><div>{facts}</div><div>{len(rows)} steps: {legend}</div>"
            f"<ul style='padding-left:0'>{roots}</ul></div>")


def page(x: Any, title: str = "TTS step tree") -> str:
    """A whole HTML document (what the service serves)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body>{tree_html(x, title)}</body></html>")


def show(x: Any, title: str = "TTS step tree"):
    """The tree in a notebook cell."""
    from IPython.display import HTML

    return HTML(tree_html(x, title))
