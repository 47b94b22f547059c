"""One thread owns the engine and drives it step by step for every live request.

Each request is a job: plain generation (one sequence) or a TTS strategy (the same
generator `kk.run_strategy` runs; every round is a set of single-sample sequences).
Jobs' sequences wait in per-job queues; before every engine step the scheduler decides
which of them are in the engine:

- the engine holds at most `slots` sequences (default: what its KV cache holds at full
  length);
- plain requests (interactive: one sequence, a person or a client waiting on it) are
  always let in;
- TTS jobs share the remaining slots equally; while any interactive request is in
  flight (and for `grace_s` after the last one, so back-to-back small requests do not
  each wait for the big jobs to fill the engine again), each keeps only
  `interactive_share` sequences (default 1) and its extra ones are paused: aborted and
  queued again (every sample has its own seed, so a paused sample is regenerated
  exactly). A small request then waits for a few sequences, not for a maximal
  request's whole width.

The engine is driven only through the Engine seam (`add`, `step`, `abort`), so this
scheduling is unit-tested with the scripted engine as well as run on vLLM. The asyncio
side never blocks: it hands jobs over and reads their events from a queue.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
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
_run = os.urandom(3).hex()  # request ids stay unique across restarts of the process


class Busy(RuntimeError):
    """The worker's queue is full."""


@dataclasses.dataclass
class Event:
    kind: str  # "delta" (text), "done" (payload: dict or StrategyResult), "error" (payload: exception)
    text: str = ""
    payload: Any = None


class Job:
    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_ids, *, stream: bool,
                 spec: SamplingSpec | None = None, search: Search | None = None):
        self.id = f"{_run}{next(_job_ids):05d}"
        self.loop, self.prompt_ids, self.stream = loop, tuple(prompt_ids), stream
        self.spec, self.search = spec, search
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.start = time.perf_counter()
        self.rids: set[str] = set()  # sequences in the engine
        self.pending: collections.deque = collections.deque()  # (rid, prompt_ids, spec, stream) waiting for a slot
        self.requests: dict[str, tuple] = {}  # rid -> (prompt_ids, spec, stream): what a paused sequence needs
        self.paused = 0
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

    @property
    def strategy(self) -> str:
        return self.search.p.strategy if self.search is not None else "plain"

    def post(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def default_slots(engine) -> int:
    """Sequences the engine holds at once: what its KV cache holds at full length (4..64)."""
    kv = getattr(engine, "kv_cache_tokens", None) or 0
    return max(4, min(64, kv // max(1, engine.max_model_len))) if kv else 16


class EngineWorker:
    def __init__(self, engine, max_active: int = 32, max_queued: int = 64, slots: int | None = None,
                 interactive_share: int = 1, metrics=None, grace_s: float = 0.5):
        self.engine = engine
        self.max_active, self.max_queued = max_active, max_queued
        self.slots = slots or default_slots(engine)
        self.interactive_share = max(0, interactive_share)
        self.grace_s = grace_s
        self._last_interactive = float("-inf")
        self.metrics = metrics
        self.incoming: queue.Queue[Job] = queue.Queue()
        self.active: dict[str, Job] = {}
        self.owner: dict[str, Job] = {}  # engine request id -> job
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
                self._schedule()
                self._gauges()
                if not self.owner:
                    self._wake.wait(0.01)
                    self._wake.clear()
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
                            log.exception("[%s] failed while routing engine output", job.id)
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

    def _gauges(self) -> None:
        m = self.metrics
        if m is not None:
            m.queue_depth.set(self.incoming.qsize())
            m.active_requests.set(len(self.active))
            m.active_sequences.set(len(self.owner))
            m.pending_sequences.set(sum(len(j.pending) for j in self.active.values()))

    def _admit(self) -> None:
        while len(self.active) < self.max_active and not self.incoming.empty():
            job = self.incoming.get_nowait()
            if job.cancelled.is_set():
                job.post(Event("error", payload=asyncio.CancelledError()))
                continue
            self.active[job.id] = job
            log.info("[%s] started: %s, %d prompt tokens", job.id, job.strategy, len(job.prompt_ids))
            try:
                if job.is_tts:
                    job.gen = STRATEGY_FUNCS[job.search.p.strategy](job.search, self.engine.tokenizer)
                    self._advance(job, None)
                else:
                    self._queue(job, job.id, job.prompt_ids, job.spec, job.stream)
            except Exception as e:
                log.exception("[%s] failed to start", job.id)
                self._fail(job, e)

    # -- slots ------------------------------------------------------------------------
    def _queue(self, job: Job, rid: str, prompt_ids, spec: SamplingSpec, stream: bool = False, front=False) -> None:
        item = (rid, tuple(prompt_ids), spec, stream)
        job.pending.appendleft(item) if front else job.pending.append(item)

    def _add(self, job: Job, item) -> None:
        rid, prompt_ids, spec, stream = item
        self.engine.add(rid, prompt_ids, spec, stream=stream)
        self.owner[rid] = job
        job.rids.add(rid)
        job.requests[rid] = (prompt_ids, spec, stream)

    def _schedule(self) -> None:
        interactive = [j for j in self.active.values() if not j.is_tts]
        big = [j for j in self.active.values() if j.is_tts]
        for j in interactive:  # always let in: one sequence each
            while j.pending:
                self._add(j, j.pending.popleft())
        if not big:
            return
        in_use = sum(len(j.rids) for j in interactive)
        now = time.monotonic()
        if any(j.rids for j in interactive):
            self._last_interactive = now
        waiting = now - self._last_interactive < self.grace_s
        quota = self.interactive_share if waiting else max(1, (self.slots - in_use) // len(big))
        for j in big:
            if waiting:
                self._pause(j, len(j.rids) - quota)
        free = self.slots - sum(len(j.rids) for j in self.active.values())
        for j in sorted(big, key=lambda j: len(j.rids)):  # the job with the fewest sequences first
            while len(j.rids) < quota and j.pending and (free > 0 or not j.rids):
                self._add(j, j.pending.popleft())
                free -= 1

    def _pause(self, job: Job, n: int) -> None:
        """Take the job's `n` newest sequences out of the engine; they run again later, from the start."""
        if n <= 0:
            return
        victims = sorted(job.rids)[-n:]
        self.engine.abort(victims)
        for rid in reversed(victims):
            job.rids.discard(rid)
            self.owner.pop(rid, None)
            prompt_ids, spec, stream = job.requests.pop(rid)
            new = f"{rid.split('~')[0]}~{job.paused}"  # the engine must see a fresh id
            job.paused += 1
            if rid in job.slots:
                job.slots[new] = job.slots.pop(rid)
            self._queue(job, new, prompt_ids, spec, stream, front=True)
        if self.metrics is not None:
            self.metrics.preemptions.inc(n)
        log.info("[%s] paused %d sequence(s) for interactive requests", job.id, n)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self.active.values() if j.cancelled.is_set()]:
            self._fail(job, asyncio.CancelledError(), "cancelled by the client")

    def _drop(self, job: Job) -> None:
        for rid in job.rids:
            self.owner.pop(rid, None)
        job.rids.clear()
        job.pending.clear()
        self.active.pop(job.id, None)

    def _fail(self, job: Job, exc: BaseException, why: str | None = None) -> None:
        """End a job early: its sequences leave the engine, its strategy generator is closed."""
        self.engine.abort(sorted(job.rids))
        self._drop(job)
        if job.gen is not None:
            job.gen.close()
        log.info("[%s] %s", job.id, why or f"failed: {exc}")
        job.post(Event("error", payload=exc))

    # -- routing engine output ---------------------------------------------------
    def _route(self, job: Job, ev) -> None:
        if self.metrics is not None:
            n = len(ev.token_ids) if job.stream and not job.is_tts else (
                ev.completion.num_tokens if ev.finished and ev.completion is not None else 0)
            self.metrics.generated_tokens.inc(n)
        if not job.is_tts:
            return self._route_plain(job, ev)
        if not ev.finished:
            return
        i, k = job.slots.pop(ev.request_id)
        job.outs[i][k] = ev.completion
        self.owner.pop(ev.request_id, None)
        job.rids.discard(ev.request_id)
        job.requests.pop(ev.request_id, None)
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
        log.info("[%s] finished: %s", job.id, ev.finish_reason)
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
            log.info("[%s] finished: %s after %d rounds", job.id, result.completion_reason.value, job.round)
            job.post(Event("done", payload=result))
            return
        if job.stream:
            self._stream_fixed(job)
        job.round += 1
        if self.metrics is not None:
            self.metrics.tts_rounds.labels(job.strategy).inc()
        job.outs = [[None] * r.sampling.n for r in reqs]
        for i, r in enumerate(reqs):
            for k, spec in enumerate(r.samples()):  # the fan-out VLLMEngine.generate uses too
                rid = f"{job.id}-{job.round}-{i}-{k}"
                job.slots[rid] = (i, k)
                self._queue(job, rid, r.prompt_ids, spec)

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
