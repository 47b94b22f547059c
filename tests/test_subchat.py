"""Hierarchical subchat: real SQLite files, the echo backend for logic, vLLM end to end."""
import multiprocessing as mp

import httpx
import pytest

import kaggle_kit as kk
from kaggle_kit.chat.backends import Backend
from kaggle_kit.chat.types import BackendError, ChatStream
from kaggle_kit.subchat import open_store


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "chat.sqlite")


@pytest.fixture
def echo():
    return kk.SimpleLLMClient(["echo"])


def contents(ctx):
    return [(m["role"], m["content"]) for m in ctx]


def test_context_inherits_ancestors_up_to_the_branch_point_and_never_siblings(store, echo):
    root = store.new_conversation("Optimise softmax", system_prompt="Be brief.")
    r1 = echo.generate_response(root, "q1")
    echo.generate_response(root, "q2")  # after the branch point: the subchat must not see it
    sub_a = root.branch(from_message=r1, title="A")
    sub_b = root.branch(from_message=r1, title="B")
    a1 = echo.generate_response(sub_a, "a-q1")
    echo.generate_response(sub_b, "b-q1")  # a sibling: invisible to A and its children
    deep = sub_a.branch(from_message=a1, title="A.1")
    d1 = echo.generate_response(deep, "deep-q1")
    deeper = deep.branch(from_message=d1, title="A.1.1")  # depth 3
    ctx = deeper.context(pending_user="now?")
    assert contents(ctx) == [
        ("system", "Be brief."),
        ("user", "q1"), ("assistant", "Echo: q1"),
        ("user", "a-q1"), ("assistant", "Echo: a-q1"),
        ("user", "deep-q1"), ("assistant", "Echo: deep-q1"),
        ("user", "now?"),
    ]
    assert all("q2" not in c and "b-q1" not in c for _, c in contents(ctx))
    assert contents(sub_b.context())[-2:] == [("user", "b-q1"), ("assistant", "Echo: b-q1")]
    assert [n.title for n in store.ancestors(deeper)] == ["Optimise softmax", "A", "A.1"]


def test_thinking_is_kept_apart_and_never_sent(store):
    class Thinker(Backend):
        name = "thinker"

        def available(self):
            return True

        def stream(self, messages, **options):
            s = ChatStream(iter(["answer text"]), self.name)
            s.thinking = "private reasoning"
            return s

    client = kk.SimpleLLMClient([Thinker()])
    root = store.new_conversation("t")
    reply = client.generate_response(root, "q")
    assert reply.thinking == "private reasoning" and reply.content == "answer text" and reply.backend == "thinker"
    assert all("private reasoning" not in m["content"] for m in root.context(pending_user="next"))


def test_trimming_drops_oldest_turns_keeps_newest_and_the_current_message(store, echo):
    root = store.new_conversation("long", system_prompt="sys")
    for i in range(10):
        echo.generate_response(root, f"question {i} " + "x" * 50)
    sub = root.branch(root.messages[-1], "sub")
    count = lambda text: len(text)  # noqa: E731  (one token a character: easy to reason about)
    current = "the current question " + "y" * 80
    ctx = sub.context(budget_tokens=500, count_tokens=count, pending_user=current)
    assert ctx[-1] == {"role": "user", "content": current}
    assert ctx[0]["role"] == "system" and "left out to fit" in ctx[0]["content"] and ctx[0]["content"].startswith("sys")
    assert ctx[1]["role"] == "user"  # the kept history starts with a user turn
    kept = [m["content"] for m in ctx[1:-1]]
    assert kept and kept[-1].startswith("Echo: question 9")  # the newest turns survive
    assert not any(c.startswith("question 0") for c in kept)  # the oldest went first
    assert sum(len(m["content"]) for m in ctx) <= 500
    with pytest.raises(ValueError, match="window"):
        sub.context(budget_tokens=20, count_tokens=count, pending_user=current)


def test_restart_keeps_everything(tmp_path, echo):
    path = tmp_path / "persist.sqlite"
    s1 = open_store(path)
    root = s1.new_conversation("kept")
    reply = echo.generate_response(root, "remember me")
    sub = root.branch(reply, "child")
    s1.close()
    s2 = open_store(path)
    (again,) = s2.conversations()
    assert again.title == "kept" and [m.content for m in again.messages] == ["remember me", "Echo: remember me"]
    assert [c.title for c in again.children()] == ["child"] and s2.get(sub.id).branch_message_id == reply.id
    assert s2.tree(root.id)["children"][0]["title"] == "child"


def _writer(path, node_id, tag, n):
    s = open_store(path)
    for i in range(n):
        s.add_message(node_id, "user", f"{tag}-{i}")


def test_two_processes_write_the_same_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    s = open_store(path)
    a, b = s.new_conversation("a"), s.new_conversation("b")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, node.id, node.title, 150)) for node in (a, b, a)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert len(s.messages(a.id)) == 300 and len(s.messages(b.id)) == 150


class Failing(Backend):
    name = "failing"

    def __init__(self, after: int | None = None):
        self.after = after

    def available(self):
        return True

    def generate(self, messages, **options):
        raise BackendError(self.name, "model exploded")

    def stream(self, messages, **options):
        def pieces():
            for i, p in enumerate(["partial ", "answer ", "more"]):
                if self.after is not None and i >= self.after:
                    raise BackendError(self.name, "connection lost")
                yield p
        return ChatStream(pieces(), self.name)


def test_failed_generation_keeps_the_message_and_the_error(store):
    root = store.new_conversation("f")
    with pytest.raises(Exception, match="model exploded"):
        kk.SimpleLLMClient([Failing()]).generate_response(root, "will it work?")
    (msg,) = root.messages
    assert msg.content == "will it work?" and msg.status == "error" and "model exploded" in msg.error


def test_interrupted_stream_keeps_partial_text_marked_incomplete(store, echo):
    root = store.new_conversation("s")
    client = kk.SimpleLLMClient([Failing(after=2)])
    got = []
    with pytest.raises(BackendError):
        for piece in client.generate_response_stream(root, "stream please"):
            got.append(piece)
    user, partial = root.messages
    assert partial.content == "partial answer " == "".join(got) and partial.status == "incomplete"
    assert "connection lost" in partial.error
    # a consumer that stops early also keeps what arrived
    gen = echo.generate_response_stream(root, "one two three four")
    next(gen)
    gen.close()
    assert root.messages[-1].status == "incomplete" and root.messages[-1].content == "Echo:"


def test_bad_input(store, echo):
    root = store.new_conversation("x")
    with pytest.raises(ValueError, match="empty"):
        echo.generate_response(root, "   ")
    with pytest.raises(ValueError, match="title"):
        store.new_conversation("")
    with pytest.raises(KeyError):
        store.get(999)
    other = store.new_conversation("y")
    msg = echo.generate_response(other, "hi")
    with pytest.raises(ValueError, match="belongs to node"):
        root.branch(msg)


def test_http_api(tmp_path, echo):
    srv = kk.serve(port=0, engine_provider=lambda: None, subchat_store=tmp_path / "api.sqlite", subchat_client=echo)
    api = srv.url.replace("/v1", "/api")
    try:
        root = httpx.post(f"{api}/conversations", json={"title": "via http", "system_prompt": "S"}).json()
        r = httpx.post(f"{api}/nodes/{root['id']}/messages", json={"content": "hello"}, timeout=30).json()
        assert r["user"]["content"] == "hello" and r["assistant"]["content"] == "Echo: hello"
        sub = httpx.post(f"{api}/nodes/{root['id']}/branches",
                         json={"from_message_id": r["assistant"]["id"], "title": "deeper"})
        assert sub.status_code == 201
        sub = sub.json()
        with httpx.stream("POST", f"{api}/nodes/{sub['id']}/messages", json={"content": "stream it", "stream": True}, timeout=30) as s:
            lines = [l for l in s.iter_lines() if l]
        assert lines[-1] == "data: [DONE]"
        import json

        events = [json.loads(l[6:]) for l in lines[:-1]]
        assert "".join(e.get("delta", "") for e in events) == "Echo: stream it"
        assert events[-1]["message"]["content"] == "Echo: stream it"
        node = httpx.get(f"{api}/nodes/{sub['id']}").json()
        assert [m["content"] for m in node["messages"]] == ["stream it", "Echo: stream it"]
        ctx = httpx.get(f"{api}/nodes/{sub['id']}/context").json()
        assert [m["content"] for m in ctx] == ["S", "hello", "Echo: hello", "stream it", "Echo: stream it"]
        tree = httpx.get(f"{api}/conversations/{root['id']}/tree").json()
        assert tree["children"][0]["title"] == "deeper"
        assert [c["title"] for c in httpx.get(f"{api}/conversations").json()] == ["via http"]
        for method, path, body, status in [("get", "/nodes/999", None, 404), ("post", f"/nodes/{root['id']}/messages", {"content": ""}, 400),
                                           ("post", f"/nodes/{root['id']}/branches", {"from_message_id": 12345}, 404),
                                           ("post", "/conversations", {"title": "t", "colour": "red"}, 400)]:
            resp = getattr(httpx, method)(f"{api}{path}", **({"json": body} if body else {}))
            assert resp.status_code == status and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    finally:
        srv.stop()


def test_widget_driven_from_python(store, echo):
    kk.subchat.widget(store, echo)  # a second call (a re-run cell) gets a widget too, not a module
    ui = kk.subchat.widget(store, echo)
    ctl = ui.controller
    ctl.new_title.value = "widget chat"
    ctl.new_button.click()
    root_id = ctl.node_id
    assert store.get(root_id).title == "widget chat" and ctl.tree.value == root_id
    ctl.input.value = "first question"
    ctl.send_button.click()
    assert [m.content for m in store.get(root_id).messages] == ["first question", "Echo: first question"]
    assert len(ctl.messages.children) == 2 and "answered by echo" in ctl.status.value and ctl.input.value == ""
    reply_id = store.get(root_id).messages[-1].id
    ctl.branch_buttons[reply_id].click()
    sub_id = ctl.node_id
    assert sub_id != root_id and store.get(sub_id).branch_message_id == reply_id
    assert any("└" in label for label, _ in ctl.tree.options)
    ctl.input.value = "in the subchat"
    ctl.send_button.click()
    assert [m.content for m in store.get(sub_id).messages] == ["in the subchat", "Echo: in the subchat"]
    ctl.tree.value = root_id  # selecting in the tree shows that node
    assert ctl.node_id == root_id and len(ctl.messages.children) == 2


@pytest.mark.vllm
def test_end_to_end_on_vllm(registered, tmp_path):
    s = open_store(tmp_path / "vllm.sqlite")
    client = kk.SimpleLLMClient(["vllm"])
    root = s.new_conversation("Optimise softmax", system_prompt="You are a CUDA expert.")
    reply = client.generate_response(root, "Optimise the softmax kernel.", max_tokens=40, temperature=0.0)
    assert reply.backend == "vllm" and reply.content and reply.completion_tokens > 0
    sub = root.branch(from_message=reply, title="Shared-memory details")
    pieces = list(client.generate_response_stream(sub, "Optimise the relu kernel.", max_tokens=40, temperature=0.0))
    assert len(pieces) > 1 and sub.messages[-1].content == "".join(pieces) and sub.messages[-1].status == "ok"
    ctx = sub.context()
    assert ctx[1]["content"] == "Optimise the softmax kernel." and ctx[2]["content"] == reply.content


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    import sqlite3

    from kaggle_kit.subchat.store import SCHEMA_VERSION, SubchatStore

    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE nodes (id INTEGER PRIMARY KEY AUTOINCREMENT, root_id INTEGER, parent_id INTEGER,
            branch_message_id INTEGER, title TEXT NOT NULL, system_prompt TEXT, created_at REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, node_id INTEGER NOT NULL, role TEXT NOT NULL,
            content TEXT NOT NULL, thinking TEXT NOT NULL DEFAULT '', backend TEXT, prompt_tokens INTEGER,
            completion_tokens INTEGER, status TEXT NOT NULL DEFAULT 'ok', error TEXT, created_at REAL NOT NULL);
        INSERT INTO nodes (id, root_id, title, created_at) VALUES (1, 1, 'old', 0);
        INSERT INTO messages (node_id, role, content, created_at) VALUES (1, 'user', 'kept', 0);
        PRAGMA user_version = 1;""")
    db.close()
    store = SubchatStore(path)
    root = store.get(1)
    assert root.title == "old" and root.meta == {} and [m.content for m in root.messages] == ["kept"]
    sub = root.branch(root.messages[0], "attempt", meta={"attempt": "k#0", "status": "correct"})
    store.add_message(sub.id, "assistant", "answer", meta={"speedup": 1.5})
    again = SubchatStore(path)
    assert again._db().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert [n.id for n in again.find(attempt="k#0")] == [sub.id] and again.messages(sub.id)[0].meta == {"speedup": 1.5}


def test_the_widget_cell_prints_the_tree_when_ipywidgets_is_missing(tmp_path, monkeypatch):
    # A notebook run top to bottom must not stop at the last cell of stage 03 on a machine without
    # ipywidgets (the GPU rehearsal machine had none).
    import sys

    import kaggle_kit as kk

    store = kk.subchat.open_store(tmp_path / "s.sqlite")
    root = store.new_conversation("Optimise softmax")
    hi = store.add_message(root.id, "user", "hi")
    root.branch(from_message=hi, title="Shared memory")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "kaggle_kit.subchat.ui", raising=False)
    shown = kk.subchat.widget(store)
    assert "- Optimise softmax" in repr(shown) and "  - Shared memory" in repr(shown)
    assert "pip install ipywidgets" in shown
