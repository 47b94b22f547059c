"""The notebook UI for the subchat (ipywidgets).

Left: every conversation and subchat as an indented tree, plus "new conversation".
Right: the selected node's messages, each with a "branch here" button, and an
input box whose reply streams in. Logic stays in the store and the client; this
only wires widgets to them, so tests drive it by calling the same handlers a
click would (`button.click()`).
"""
from __future__ import annotations

import html

import ipywidgets as w

from kaggle_kit.pages import markdown as render


def _badge(meta: dict) -> str:
    """A refinement attempt's verdict next to its message: status, speedup, score."""
    if not meta or "status" not in meta:
        return ""
    ok = meta.get("status") == "correct"
    color = "#1a7f37" if ok and meta.get("correct", True) else ("#9a6700" if ok else "#b00")
    parts = [meta["status"]]
    if meta.get("speedup"):
        parts.append(f"{meta['speedup']:.2f}x")
    if meta.get("kind") == "answer" and meta.get("score") is not None:
        parts.append(f"score {meta['score']:.3f}")
    return f" <small class='kk-badge' style='color:{color}'>[{html.escape(' · '.join(parts))}]</small>"


class SubchatWidget:
    def __init__(self, store, client=None):
        if client is None:
            from kaggle_kit.chat.client import SimpleLLMClient

            client = SimpleLLMClient()
        self.store, self.client = store, client
        self.node_id: int | None = None
        self.tree = w.Select(options=[], rows=14, layout=w.Layout(width="100%"), description="")
        self.new_title = w.Text(placeholder="New conversation title")
        self.new_button = w.Button(description="New conversation", icon="plus")
        self.header = w.HTML()
        self.messages = w.VBox(layout=w.Layout(max_height="480px", overflow="auto"))
        self.live = w.HTML()  # the reply being streamed
        self.input = w.Textarea(placeholder="Message (Send, or branch from any message above)",
                                layout=w.Layout(width="100%", height="80px"))
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.status = w.HTML()
        self.branch_buttons: dict[int, w.Button] = {}

        self.tree.observe(self._on_select, names="value")
        self.new_button.on_click(lambda _: self.new_conversation(self.new_title.value))
        self.send_button.on_click(lambda _: self.send(self.input.value))
        left = w.VBox([w.HTML("<b>Conversations</b>"), self.tree, self.new_title, self.new_button],
                      layout=w.Layout(width="32%"))
        right = w.VBox([self.header, self.messages, self.live, self.input, w.HBox([self.send_button, self.status])],
                       layout=w.Layout(width="66%"))
        self.ui = w.HBox([left, right])
        self.ui.controller = self  # reachable from the displayed widget
        self.refresh_tree()

    # -- actions (what clicks do) ------------------------------------------------------
    def new_conversation(self, title: str):
        if not title.strip():
            self.status.value = "<span style='color:#b00'>give the conversation a title</span>"
            return None
        node = self.store.new_conversation(title)
        self.new_title.value = ""
        self.refresh_tree()
        self.select(node.id)
        return node

    def select(self, node_id: int) -> None:
        self.node_id = node_id
        if self.tree.value != node_id:
            self.tree.value = node_id
        self.refresh_messages()

    def send(self, text: str):
        if self.node_id is None:
            self.status.value = "<span style='color:#b00'>select or create a conversation first</span>"
            return None
        if not text.strip():
            return None
        node = self.store.get(self.node_id)
        self.input.value = ""
        self.status.value = "generating…"
        answer = ""
        try:
            for piece in node.reply_stream(self.client, text):
                answer += piece
                self.live.value = f"<div style='opacity:.7'><b>assistant</b> {html.escape(answer)}</div>"
            self.status.value = f"answered by {self.client.backend}"
        except Exception as e:  # the store keeps the message and the error; show it, keep the UI alive
            self.status.value = f"<span style='color:#b00'>{html.escape(type(e).__name__ + ': ' + str(e))}</span>"
        self.live.value = ""
        self.refresh_messages()
        self.refresh_tree()
        return answer

    def branch(self, message_id: int, title: str | None = None):
        node = self.store.get(self.node_id)
        sub = node.branch(message_id, title or f"branch at #{message_id}")  # the breadcrumb names its parent
        self.refresh_tree()
        self.select(sub.id)
        return sub

    # -- rendering ---------------------------------------------------------------------
    def refresh_tree(self) -> None:
        options = []

        def walk(n: dict, depth: int) -> None:
            label = ("    " * depth) + ("└ " if depth else "") + f"{n['title']} ({n['message_count']})"
            options.append((label, n["id"]))
            for child in n["children"]:
                walk(child, depth + 1)

        for root in self.store.conversations():
            walk(self.store.tree(root.id), 0)
        current = self.node_id
        self.tree.options = options
        if current is not None and any(v == current for _, v in options):
            self.tree.value = current

    def refresh_messages(self) -> None:
        node = self.store.get(self.node_id)
        path = " › ".join(a.title for a in self.store.ancestors(node) + [node])
        self.header.value = f"<h4 style='margin:4px 0'>{html.escape(path)}</h4>"
        rows, self.branch_buttons = [], {}
        answered = self._answered(node)
        for m in node.messages:
            note = {"error": f" ⚠ {m.error}", "incomplete": " (incomplete)"}.get(m.status, "")
            body = render.to_html(m.content)
            if answered is not None and m.meta.get("kind") == "answer":  # a refinement: what it changed
                body += render.diff_html(answered, m.content)
            info = f" <small style='color:#888'>via {m.backend}</small>" if m.backend else ""
            info += _badge(m.meta)
            label = w.HTML(f"<div><b>{m.role}</b>{info}{html.escape(note)}<br>{body}</div>", layout=w.Layout(width="85%"))
            button = w.Button(description="branch here", layout=w.Layout(width="110px"), tooltip=f"open a subchat at message {m.id}")
            button.on_click(lambda _, mid=m.id: self.branch(mid))
            self.branch_buttons[m.id] = button
            rows.append(w.HBox([label, button]))
        self.messages.children = rows

    def _answered(self, node) -> str | None:
        """For a refinement attempt, the answer of the attempt whose feedback it answers."""
        if (node.meta or {}).get("round", 1) <= 1:
            return None
        parents = self.store.ancestors(node)
        previous = [m for m in (parents[-1].messages if parents else []) if m.meta.get("kind") == "answer"]
        return previous[-1].content if previous else None

    def _on_select(self, change) -> None:
        if change["new"] is not None and change["new"] != self.node_id:
            self.node_id = change["new"]
            self.refresh_messages()
