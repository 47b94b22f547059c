"""Kaggle's kernels API as the real kaggle CLI speaks it, with scripted sessions.

kagglesdk 0.1.38 sends every call as POST <endpoint>/api/v1/<service>/<Method> with a JSON body in
camelCase and reads JSON back (kaggle_http_client.py); output files are fetched from the URLs the
listing hands out. The kaggle CLI 2.2.5 picks its endpoint from its own arguments, not from
kagglesdk's KAGGLE_API_ENVIRONMENT=TEST (localhost:7777): only KAGGLE_API_ENVIRONMENT=LOCALHOST
is honoured, as `--local`, i.e. http://localhost (kaggle_api_extended.py: KaggleApi.args and
build_kaggle_client_with_params). So the tests set LOCALHOST and route plain-HTTP localhost through
HTTP_PROXY to this server on a free port (requests honours it for the API calls and the downloads).

This fake answers the calls the shard flow makes (SaveKernel, GetKernelSessionStatus,
ListKernelSessionOutput with paging, GetAcceleratorQuotaStatistics), keeps every pushed version,
and runs sessions one at a time, as a scheduler would, each with its own /kaggle/working and
/kaggle/input (the kernel sources it names, mounted by slug). How a session goes is scripted per
kernel slug: "complete", "error" (fails before writing anything), "deadline" (its 12 hours end
after the first item), "never" (stays queued).
"""
from __future__ import annotations

import base64
import json
import queue
import shutil
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

HOST = "http://localhost"  # what the CLI calls with KAGGLE_API_ENVIRONMENT=LOCALHOST


@dataclass
class Version:
    slug: str  # owner/slug
    number: int
    request: dict
    status: str = "QUEUED"
    message: str = ""
    working: Path | None = None
    log: str = ""


@dataclass
class FakeKaggle:
    root: Path
    session: Callable  # (version, working dir, inputs dir, behaviour) -> None; raises to fail the session
    user: str = "kk-tester"
    key: str = "fake-key-0123"
    script: dict[str, str] = field(default_factory=dict)  # kernel slug -> behaviour of its next session
    versions: dict[str, list[Version]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                want = "Basic " + base64.b64encode(f"{fake.user}:{fake.key}".encode()).decode()
                return self.headers.get("Authorization") == want

            def do_POST(self):
                if not self._authorized():
                    return self._send(401, json.dumps({"code": 401, "message": "Unauthenticated"}).encode())
                method = urlsplit(self.path).path.rsplit("/", 1)[-1]  # a proxy request has the whole URL
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.calls.append(method)
                handler = getattr(fake, f"api_{method}", None)
                if handler is None:
                    return self._send(404, json.dumps({"code": 404, "message": f"no {method}"}).encode())
                code, answer = handler(body)
                self._send(code, json.dumps(answer).encode())

            def do_GET(self):  # the signed URLs of output files: /files/<owner>/<slug>/<version>/<path>
                parts = urlsplit(self.path).path.split("/", 5)
                if len(parts) < 6 or parts[1] != "files":
                    return self._send(404, b"{}")
                v = fake._version(f"{parts[2]}/{parts[3]}", int(parts[4]))
                path = (v.working / parts[5]) if v and v.working else None
                if path is None or not path.is_file():
                    return self._send(404, b"{}")
                self._send(200, path.read_bytes(), "application/octet-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.proxy = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._worker = threading.Thread(target=self._run_sessions, daemon=True)
        self._worker.start()

    # -- the API -----------------------------------------------------------------------------------
    def _version(self, slug: str, number: int | None = None) -> Version | None:
        versions = self.versions.get(slug) or []
        if number is None:
            return versions[-1] if versions else None
        return next((v for v in versions if v.number == number), None)

    @staticmethod
    def _error(code: int, message: str):
        return code, {"code": code, "message": message}

    def api_SaveKernel(self, body: dict):
        slug = body.get("slug") or ""
        if slug.count("/") != 1 or not slug.startswith(self.user + "/"):
            return self._error(403, f"cannot push {slug!r} as {self.user}")
        text = json.loads(body.get("text") or "{}")
        if "cells" not in text:
            return self._error(400, "the kernel's text is not a notebook")
        missing = [s for s in body.get("kernelDataSources", []) if not self._version(s)]
        if missing:
            return 200, {"ref": f"/code/{slug}", "url": f"{HOST}/code/{slug}",
                         "error": f"kernel source(s) not found: {missing}"}
        with self._lock:
            versions = self.versions.setdefault(slug, [])
            v = Version(slug, len(versions) + 1, body)
            versions.append(v)
        if self.script.get(slug.split("/")[1], "complete") != "never":
            self._queue.put(v)
        return 200, {"ref": f"/code/{slug}", "url": f"{HOST}/code/{slug}",
                     "versionNumber": v.number, "kernelId": 1000 + len(self.versions)}

    def api_GetKernelSessionStatus(self, body: dict):
        v = self._version(f"{body.get('userName')}/{body.get('kernelSlug')}")
        if v is None:
            return self._error(404, "Not found")
        return 200, {"status": v.status, **({"failureMessage": v.message} if v.message else {})}

    def api_ListKernelSessionOutput(self, body: dict):
        slug = f"{body.get('userName')}/{body.get('kernelSlug')}"
        v = self._version(slug)
        if v is None:
            return self._error(404, "Not found")
        files = sorted(str(p.relative_to(v.working)) for p in v.working.rglob("*") if p.is_file()) \
            if v.working and v.status in ("COMPLETE", "ERROR") else []
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 20)
        page = files[start:start + size]
        answer = {"files": [{"fileName": f, "url": f"{HOST}/files/{slug}/{v.number}/{f}"} for f in page],
                  "log": v.log}
        if start + size < len(files):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def api_GetAcceleratorQuotaStatistics(self, body: dict):
        return 200, {"quotaRefreshTime": "2026-12-05T00:00:00.000Z",
                     "gpuQuota": {"timeUsed": "10800s", "totalTimeAllowed": "108000s"}}

    # -- sessions ----------------------------------------------------------------------------------
    def _run_sessions(self):
        while True:
            v = self._queue.get()
            if v is None:
                return
            name = v.slug.split("/")[1]
            behaviour = self.script.get(name, "complete")
            base = self.root / "sessions" / name / str(v.number)
            working, inputs = base / "working", base / "input"
            working.mkdir(parents=True)
            inputs.mkdir()
            for src in v.request.get("kernelDataSources", []):  # mounted read-only by slug
                done = self._version(src)
                if done is not None and done.working is not None:
                    shutil.copytree(done.working, inputs / src.split("/")[1])
            v.working, v.status = working, "RUNNING"
            try:
                if behaviour == "error":
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                self.session(v, working, inputs, behaviour)
                v.status = "COMPLETE"
            except Exception as e:  # the session's own failure: ERROR, as Kaggle reports it
                v.log = traceback.format_exc()
                v.status, v.message = "ERROR", f"{type(e).__name__}: {e}"
            finally:
                self._queue.task_done()

    def wait_idle(self) -> None:
        """Until every session that will start has ended ("never" ones never start)."""
        self._queue.join()

    def close(self):
        self._queue.put(None)
        self.server.shutdown()
        self.server.server_close()
