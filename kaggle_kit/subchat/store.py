"""SQLite storage for conversation trees.

WAL mode and short transactions let a notebook and the service (two processes)
share one file. The schema is versioned with PRAGMA user_version; an older file is
migrated in place when opened (version 2 added a JSON `meta` to nodes and messages:
what a kernel-refinement attempt was, its status and speedup).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    root_id INTEGER,
    parent_id INTEGER REFERENCES nodes(id),
    branch_message_id INTEGER REFERENCES messages(id),
    title TEXT NOT NULL,
    system_prompt TEXT,
    created_at REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id INTEGER NOT NULL REFERENCES nodes(id),
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    thinking TEXT NOT NULL DEFAULT '',
    backend TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'error', 'incomplete')),
    error TEXT,
    created_at REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS messages_by_node ON messages(node_id, id);
CREATE INDEX IF NOT EXISTS nodes_by_parent ON nodes(parent_id);
"""
# Each step takes a file from version N-1 to N.
_MIGRATIONS = {
    2: ["ALTER TABLE nodes ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE messages ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'"],
}


def default_store_path() -> Path:
    """/kaggle/working/subchat.sqlite on Kaggle (kept with the notebook's output), else ./subchat.sqlite."""
    env = os.environ.get("KK_SUBCHAT_DB")
    if env:
        return Path(env)
    kaggle = Path("/kaggle/working")
    return (kaggle if kaggle.is_dir() else Path.cwd()) / "subchat.sqlite"


@dataclass
class Message:
    id: int
    node_id: int
    role: str
    content: str
    thinking: str = ""
    backend: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: str = "ok"  # "ok", "error" (generation failed after this message), "incomplete" (stream cut)
    error: str | None = None
    created_at: float = 0.0
    meta: dict = field(default_factory=dict)  # e.g. a refinement attempt's evaluation: status, speedup

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Node:
    """A conversation (root) or a subchat opened at a message of its parent."""

    id: int
    root_id: int
    parent_id: int | None
    branch_message_id: int | None
    title: str
    system_prompt: str | None
    created_at: float
    store: "SubchatStore" = field(repr=False, compare=False, default=None)
    meta: dict = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return self.parent_id is None

    @property
    def messages(self) -> list[Message]:
        return self.store.messages(self.id)

    def branch(self, from_message: Message | int, title: str | None = None, meta: dict | None = None) -> "Node":
        return self.store.branch(self.id, from_message, title, meta)

    def children(self) -> list["Node"]:
        return self.store.children(self.id)

    def parent(self) -> "Node | None":
        return self.store.get(self.parent_id) if self.parent_id else None

    def context(self, budget_tokens: int | None = None, count_tokens=None, pending_user: str | None = None,
                max_tokens: int = 1024):
        """The chat messages the model would be sent for this node's next turn (after trimming)."""
        from kaggle_kit.subchat.context import build_context

        return build_context(self, budget_tokens=budget_tokens, count_tokens=count_tokens,
                             pending_user=pending_user, max_tokens=max_tokens)

    def reply(self, client, prompt: str, **options) -> Message:
        """One turn here with `client` (a chat client): the prompt and the answer persisted."""
        from kaggle_kit.subchat.chat import generate_response

        return generate_response(client, self, prompt, **options)

    def reply_stream(self, client, prompt: str, **options) -> Iterator[str]:
        """Like reply, yielding the answer as it arrives."""
        from kaggle_kit.subchat.chat import generate_response_stream

        yield from generate_response_stream(client, self, prompt, **options)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "store"}


class SubchatStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version}; this kaggle_kit reads up to {SCHEMA_VERSION}")
        fresh = not db.execute("SELECT name FROM sqlite_master WHERE name = 'nodes'").fetchone()
        if fresh:
            db.executescript(_SCHEMA)  # executescript manages its own transaction
        else:
            with self._tx() as tx:
                for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS.get(v, []):
                        tx.execute(statement)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # One connection per thread: sqlite3 connections must not cross threads.
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks between processes
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- nodes ----------------------------------------------------------------------
    def _node(self, row) -> Node:
        return Node(row["id"], row["root_id"], row["parent_id"], row["branch_message_id"], row["title"],
                    row["system_prompt"], row["created_at"], self, json.loads(row["meta"] or "{}"))

    def new_conversation(self, title: str, system_prompt: str | None = None, meta: dict | None = None) -> Node:
        if not isinstance(title, str) or not title.strip():
            raise ValueError("a conversation needs a non-empty title")
        with self._tx() as db:
            cur = db.execute("INSERT INTO nodes (title, system_prompt, created_at, meta) VALUES (?, ?, ?, ?)",
                             (title.strip(), system_prompt, time.time(), json.dumps(meta or {})))
            db.execute("UPDATE nodes SET root_id = id WHERE id = ?", (cur.lastrowid,))
            nid = cur.lastrowid
        return self.get(nid)

    def get(self, node_id: int) -> Node:
        row = self._db().execute("SELECT * FROM nodes WHERE id = ?", (int(node_id),)).fetchone()
        if row is None:
            raise KeyError(f"no subchat node {node_id}")
        return self._node(row)

    def find(self, **meta) -> list[Node]:
        """Nodes whose meta has these values (e.g. find(attempt="01_relu|0|beam_search|1#2"))."""
        bad = [k for k in meta if not k.isidentifier()]
        if bad:  # keys become JSON paths in the query
            raise ValueError(f"meta keys must be identifiers: {bad}")
        where = " AND ".join(f"json_extract(meta, '$.{k}') = ?" for k in meta) or "1"
        rows = self._db().execute(f"SELECT * FROM nodes WHERE {where} ORDER BY id", list(meta.values()))
        return [self._node(r) for r in rows]

    def conversations(self) -> list[Node]:
        return [self._node(r) for r in self._db().execute("SELECT * FROM nodes WHERE parent_id IS NULL ORDER BY id")]

    def children(self, node_id: int) -> list[Node]:
        return [self._node(r) for r in self._db().execute("SELECT * FROM nodes WHERE parent_id = ? ORDER BY id", (node_id,))]

    def branch(self, node_id: int, from_message: Message | int, title: str | None = None,
               meta: dict | None = None) -> Node:
        """Open a subchat of `node_id` at one of its messages: it sees everything up to that message."""
        parent = self.get(node_id)
        mid = from_message.id if isinstance(from_message, Message) else int(from_message)
        msg = self.message(mid)
        if msg.node_id != parent.id:
            raise ValueError(f"message {mid} belongs to node {msg.node_id}, not to node {parent.id}")
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO nodes (root_id, parent_id, branch_message_id, title, created_at, meta) VALUES (?, ?, ?, ?, ?, ?)",
                (parent.root_id, parent.id, mid, (title or f"Subchat of {parent.title}").strip(), time.time(),
                 json.dumps(meta or {})))
            nid = cur.lastrowid
        return self.get(nid)

    def ancestors(self, node: Node) -> list[Node]:
        """Root first, `node` excluded."""
        chain, cur = [], node
        while cur.parent_id is not None:
            cur = self.get(cur.parent_id)
            chain.append(cur)
        return chain[::-1]

    def tree(self, root_id: int) -> dict:
        """The conversation as nested dicts: node fields, message count, children."""
        rows = self._db().execute("SELECT * FROM nodes WHERE root_id = ? ORDER BY id", (root_id,)).fetchall()
        if not rows:
            raise KeyError(f"no conversation {root_id}")
        counts = dict(self._db().execute(
            "SELECT node_id, COUNT(*) FROM messages WHERE node_id IN (SELECT id FROM nodes WHERE root_id = ?) GROUP BY node_id",
            (root_id,)).fetchall())
        nodes = {r["id"]: {**self._node(r).to_dict(), "message_count": counts.get(r["id"], 0), "children": []} for r in rows}
        root = None
        for n in nodes.values():
            if n["parent_id"] is None:
                root = n
            else:
                nodes[n["parent_id"]]["children"].append(n)
        return root

    # -- messages -------------------------------------------------------------------
    def _message(self, row) -> Message:
        d = {k: row[k] for k in row.keys()}
        d["meta"] = json.loads(d.get("meta") or "{}")
        return Message(**d)

    def message(self, message_id: int) -> Message:
        row = self._db().execute("SELECT * FROM messages WHERE id = ?", (int(message_id),)).fetchone()
        if row is None:
            raise KeyError(f"no message {message_id}")
        return self._message(row)

    def messages(self, node_id: int, up_to: int | None = None) -> list[Message]:
        q, args = "SELECT * FROM messages WHERE node_id = ?", [node_id]
        if up_to is not None:
            q += " AND id <= ?"
            args.append(up_to)
        return [self._message(r) for r in self._db().execute(q + " ORDER BY id", args)]

    def add_message(self, node_id: int, role: str, content: str, **fields) -> Message:
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise TypeError(f"content must be a string, got {type(content).__name__}")
        self.get(node_id)
        if "meta" in fields:
            fields["meta"] = json.dumps(fields["meta"] or {})
        cols = ["node_id", "role", "content", "created_at", *fields]
        with self._tx() as db:
            cur = db.execute(f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                             (node_id, role, content, time.time(), *fields.values()))
            mid = cur.lastrowid
        return self.message(mid)

    def update_message(self, message_id: int, **fields) -> Message:
        allowed = {"content", "thinking", "backend", "prompt_tokens", "completion_tokens", "status", "error"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        with self._tx() as db:
            db.execute(f"UPDATE messages SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*fields.values(), message_id))
        return self.message(message_id)


def open_store(path: str | Path | None = None) -> SubchatStore:
    """Open (or create) the subchat database; see `default_store_path` for where it lives."""
    return SubchatStore(path or default_store_path())
