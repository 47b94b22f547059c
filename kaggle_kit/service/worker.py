"""One thread owns the engine and drives it step by step for every live request.

Each request is a job: plain generation (one vLLM request) or a TTS strategy (the
same generator `kk.run_strategy` runs). All jobs' vLLM requests are in flight
together, so concurrent requests share engine steps (continuous batching) and a
strategy's next round is queued as soon as its own round finishes. The asyncio
side never blocks: it hands jobs over and reads their events from a queue.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Any

from kaggle_kit.chat.messages import ThinkSplitter
from kaggle_kit.engine.types import GenerationRequest, SamplingSpec
from kaggle_kit.tts.search import Search
from kaggle_kit.tts.strategies import STRATEGY_FUNCS, build_result

log = logging.getLogger(__name__)
_job_ids = itertools.count()


class Busy(RuntimeError):
    """The worker's queue is full."""


@dataclasses.dataclass
class Event:
    kind: str  # "delta" (text), "done" (payload: dict), "error" (payload: exception)
    text: str = ""
    payload: Any = None


class Job:
    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_ids, *, stream: bool,
                 spec: SamplingSpec | None = None, search: Search | None = None):
        self.id = f"kk{next(_job_ids)}-{int(time.time() * 1000) % 100000}"
        self.loop, self.prompt_ids, self.stream = loop, tuple(prompt_ids), stream
        self.spec, self.search = spec, search
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.start = time.perf_counter()
        self.rids: set[str] = set()
        # plain generation
        self.tokens = 0
        self.splitter = ThinkSplitter()
        # tts
        self.gen = None
        self.slots: dict[str, tuple[int, int]] = {}
        self.outs: list[list] = []
        self.round = 0
        self.emitted = ""  # fixed text already streamed

    @property
    def is_tts(self) -> bool:
        return self.search is not None

    def post(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class EngineWorker:
    def __init__(self, engine, max_active: int = 32, max_queued: int = 64):
        self.engine = engine
        self.max_active, self.max_queued = max_active, max_queued
        self.incoming: queue.Queue[Job] = queue.Queue()
        self.active: dict[str, Job] = {}
        self.owner: dict[str, Job] = {}  # vLLM request id -> job
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._holding = False
        self.thread = threading.Thread(target=self._run, name="kk-engine-worker", daemon=True)
        self.thread.start()

    # -- called from the event loop ------------------------------------------
    @property
    def load(self) -> tuple[int, int]:
        return len(self.active), self.incoming.qsize()

    def submit(self, job: Job) -> None:
        active, queued = self.load
        if self._stop.is_set():
            raise Busy("the server is shutting down")
        if active >= self.max_active and queued >= self.max_queued:
            raise Busy(f"server busy: {active} requests running and {queued} queued; retry later")
        self.incoming.put(job)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)

    # -- the worker thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.active and self.incoming.empty():
                    self._release()
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                if not self._holding:
                    self.engine.lock.acquire()  # waits while a notebook call is using the engine
                    self._holding = True
                self._admit()
                self._reap_cancelled()
                if not self.owner:
                    continue
                try:
                    events = self.engine.step()
                except Exception as e:  # the engine itself failed: every job in flight fails, the server stays up
                    log.exception("engine step failed")
                    for job in list(self.active.values()):
                        self._fail(job, e)
                    continue
                for ev in events:
                    job = self.owner.get(ev.request_id)
                    if job is not None:
                        try:
                            self._route(job, ev)
                        except Exception as e:
                            log.exception("job %s failed", job.id)
                            self._fail(job, e)
        finally:
            for job in list(self.active.values()):
                self._fail(job, Busy("the server is shutting down"))
            while not self.incoming.empty():
                self.incoming.get_nowait().post(Event("error", payload=Busy("the server is shutting down")))
            self._release()

    def _release(self) -> None:
        if self._holding:
            self.engine.lock.release()
            self._holding = False

    def _admit(self) -> None:
        while len(self.active) < self.max_active and not self.incoming.empty():
            job = self.incoming.get_nowait()
            if job.cancelled.is_set():
                job.post(Event("error", payload=asyncio.CancelledError()))
                continue
            self.active[job.id] = job
            try:
                if job.is_tts:
                    job.gen = STRATEGY_FUNCS[job.search.p.strategy](job.search, self.engine.tokenizer)
                    self._advance(job, None)
                else:
                    self._add(job, job.id, job.prompt_ids, job.spec, stream=job.stream)
            except Exception as e:
                log.exception("job %s failed to start", job.id)
                self._fail(job, e)

    def _add(self, job: Job, rid: str, prompt_ids, spec: SamplingSpec, stream: bool = False) -> None:
        self.engine.add(rid, prompt_ids, spec, stream=stream)
        self.owner[rid] = job
        job.rids.add(rid)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self.active.values() if j.cancelled.is_set()]:
            self.engine.abort(sorted(job.rids))
            self._drop(job)
            if job.gen is not None:
                job.gen.close()
            job.post(Event("error", payload=asyncio.CancelledError()))
            log.info("job %s cancelled by the client", job.id)

    def _drop(self, job: Job) -> None:
        for rid in job.rids:
            self.owner.pop(rid, None)
        job.rids.clear()
        self.active.pop(job.id, None)

    def _fail(self, job: Job, exc: Exception) -> None:
        self.engine.abort(sorted(job.rids))
        self._drop(job)
        job.post(Event("error", payload=exc))

    # -- routing engine output ---------------------------------------------------
    def _route(self, job: Job, ev) -> None:
        if not job.is_tts:
            return self._route_plain(job, ev)
        if not ev.finished:
            return
        i, k = job.slots.pop(ev.request_id)
        job.outs[i][k] = ev.completion
        self.owner.pop(ev.request_id, None)
        job.rids.discard(ev.request_id)
        if not job.slots:  # the whole round is back
            self._advance(job, job.outs)

    def _route_plain(self, job: Job, ev) -> None:
        if job.stream:
            job.tokens += len(ev.token_ids)
            piece = job.splitter.feed(ev.text)
            if piece:
                job.post(Event("delta", text=piece))
        if not ev.finished:
            return
        self._drop(job)
        if job.stream:
            tail = job.splitter.finish()
            if tail:
                job.post(Event("delta", text=tail))
            job.post(Event("done", payload={"finish_reason": ev.finish_reason, "completion_tokens": job.tokens,
                                            "thinking": job.splitter.thinking.strip()}))
        else:
            c = ev.completion
            job.post(Event("done", payload={"finish_reason": c.finish_reason, "completion_tokens": c.num_tokens,
                                            "text": c.text}))

    def _advance(self, job: Job, outputs) -> None:
        try:
            reqs: list[GenerationRequest] = job.gen.send(outputs)
        except StopIteration as stop:
            self._drop(job)
            result = build_result(job.search, *stop.value, time.perf_counter() - job.start, self.engine.tokenizer)
            if job.stream:
                self._stream_fixed(job, final_text=result.text)
            job.post(Event("done", payload=result))
            return
        if job.stream:
            self._stream_fixed(job)
        job.round += 1
        job.outs = [[None] * r.sampling.n for r in reqs]
        for i, r in enumerate(reqs):
            for k, spec in enumerate(r.samples()):  # the fan-out VLLMEngine.generate uses too
                rid = f"{job.id}-{job.round}-{i}-{k}"
                job.slots[rid] = (i, k)
                self._add(job, rid, r.prompt_ids, spec)

    def _stream_fixed(self, job: Job, final_text: str | None = None) -> None:
        """Stream the text no later step can change (and, at the end, the rest of the answer)."""
        if final_text is None:
            ids = [t for s in job.search.fixed for t in s.token_ids]
            text = self.engine.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
        else:
            text = final_text
        if text.startswith(job.emitted) and len(text) > len(job.emitted):
            piece = job.splitter.feed(text[len(job.emitted):])
            job.emitted = text
            if piece:
                job.post(Event("delta", text=piece))
        if final_text is not None:
            tail = job.splitter.finish()
            if tail:
                job.post(Event("delta", text=tail))
