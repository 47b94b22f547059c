"""Small real HTTP servers on 127.0.0.1 that speak OpenAI's and Ollama's chat wire
protocols (Groq and Ollama themselves cannot be installed here). They record the
requests they get and can be told to fail, so the client's fall-through is tested
over real sockets.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    def __init__(self, kind: str, reply: str = "hello from the fake", model: str = "fake-model", respond=None):
        self.kind, self.reply, self.model = kind, reply, model
        self.respond = respond  # body -> full answer text, instead of "<reply>: <last message>"
        self.requests: list[dict] = []
        self.fail_with: int | None = None  # HTTP status to answer chat requests with
        self.drop_mid_stream = False  # close the connection after the first chunk
        self.api_key: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # streams end when the connection closes

            def log_message(self, *a):
                pass

            def _json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if server.kind == "openai" and self.path.endswith("/models"):
                    if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        return self._json(401, {"error": {"message": "bad key"}})
                    return self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                if server.kind == "ollama" and self.path == "/api/tags":
                    return self._json(200, {"models": [{"name": server.model}]})
                self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                if server.fail_with:
                    return self._json(server.fail_with, {"error": {"message": "injected failure"}})
                last = body["messages"][-1]["content"]
                text = server.respond(body) if server.respond else f"{server.reply}: {last}"
                words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
                if server.kind == "openai" and self.path.endswith("/chat/completions"):
                    if not body.get("stream"):
                        return self._json(200, {
                            "id": "x", "object": "chat.completion", "model": server.model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)},
                        })
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for i, w in enumerate(words):
                        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if server.drop_mid_stream and i == 0:
                            return
                    end = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                    self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                    return
                if server.kind == "ollama" and self.path == "/api/chat":
                    if not body.get("stream", True):
                        return self._json(200, {"model": server.model, "message": {"role": "assistant", "content": text},
                                                "done": True, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": len(words)})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.end_headers()
                    for i, w in enumerate(words):
                        self.wfile.write((json.dumps({"model": server.model, "message": {"role": "assistant", "content": w}, "done": False}) + "\n").encode())
                        self.wfile.flush()
                        if server.drop_mid_stream and i == 0:
                            return
                    self.wfile.write((json.dumps({"model": server.model, "message": {"role": "assistant", "content": ""},
                                                  "done": True, "done_reason": "stop", "eval_count": len(words)}) + "\n").encode())
                    return
                self._json(404, {"error": "not found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" + ("/v1" if self.kind == "openai" else "")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for 'server is down' cases)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
