"""One thread owns the engine and drives it step by step for every live request.

Each request is a job: a `PlainJob` (one sampled sequence) or a `TTSJob` (the same strategy
generator `kk.run_strategy` runs; every round is a set of single-sample sequences). A job tells
the worker what it has ready to run and turns engine output into its events (`Delta`, then `Done`
or `Failed`). Jobs' sequences wait in per-job queues; before every engine step the scheduler
decides which of them are in the engine:

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

from kaggle_kit.engine.chat_template import ThinkSplitter
from kaggle_kit.engine.types import Engine, GenerationRequest, SamplingSpec, StepEvent
from kaggle_kit.tts.results import StrategyResult
from kaggle_kit.tts.search import Search
from kaggle_kit.tts.strategies import build_result, start

log = logging.getLogger(__name__)
_job_ids = itertools.count()
_run = os.urandom(3).hex()  # request ids stay unique across restarts of the process


class Busy(RuntimeError):
    """The worker's queue is full."""


# -- what a job reports -------------------------------------------------------------------------

@dataclasses.dataclass
class PlainAnswer:
    """A plain request's finished answer (its text already streamed when it was streamed)."""
    text: str
    finish_reason: str | None
    completion_tokens: int
    thinking: str = ""


@dataclasses.dataclass
class Delta:
    text: str


@dataclasses.dataclass
class Done:
    result: PlainAnswer | StrategyResult


@dataclasses.dataclass
class Failed:
    error: BaseException


Event = Delta | Done | Failed


@dataclasses.dataclass(frozen=True)
class Sequence:
    """One single-sample engine request a job wants run (paused ones run again under a fresh id)."""
    rid: str
    prompt_ids: tuple[int, ...]
    spec: SamplingSpec
    stream: bool = False


# -- jobs ---------------------------------------------------------------------------------------------

class Job:
    """What every job has: its id, events, cancel flag, and its sequences (waiting and in the engine)."""

    interactive = False  # plain requests are: the scheduler always lets them in

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt_ids, *, stream: bool):
        self.id = f"{_run}{next(_job_ids):05d}"
        self.loop, self.prompt_ids, self.stream = loop, tuple(prompt_ids), stream
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.start = time.perf_counter()
        self.running: dict[str, Sequence] = {}  # in the engine
        self.pending: collections.deque[Sequence] = collections.deque()  # waiting for a slot
        self.paused = 0
        self.metrics = None  # the service's metrics, set by the worker that runs it

    strategy = "plain"

    def post(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def begin(self, tokenizer) -> None:
        """Queue the first sequences."""
        raise NotImplementedError

    def on_output(self, ev: StepEvent, tokenizer) -> None:
        """Take one engine event for one of this job's sequences (it has already left `running` if finished)."""
        raise NotImplementedError

    def generated_tokens(self, ev: StepEvent) -> int:
        return ev.completion.num_tokens if ev.finished and ev.completion is not None else 0

    def renamed(self, old: str, new: str) -> None:
        """A paused sequence runs again under a fresh id."""

    def close(self) -> None:
        """The job ends early (failed or cancelled)."""

    @property
    def finished(self) -> bool:
        return not self.running and not self.pending


class PlainJob(Job):
    interactive = True

    def __init__(self, loop, prompt_ids, spec: SamplingSpec, *, stream: bool):
        super().__init__(loop, prompt_ids, stream=stream)
        self.spec = spec
        self.tokens = 0
        self.splitter = ThinkSplitter()

    def begin(self, tokenizer) -> None:
        self.pending.append(Sequence(self.id, self.prompt_ids, self.spec, self.stream))

    def generated_tokens(self, ev: StepEvent) -> int:
        return len(ev.token_ids) if self.stream else super().generated_tokens(ev)

    def on_output(self, ev: StepEvent, tokenizer) -> None:
        if self.stream:
            self.tokens += len(ev.token_ids)
            piece = self.splitter.feed(ev.text)
            if piece:
                self.post(Delta(piece))
        if not ev.finished:
            return
        log.info("[%s] finished: %s", self.id, ev.finish_reason)
        if self.stream:
            tail = self.splitter.finish()
            if tail:
                self.post(Delta(tail))
            self.post(Done(PlainAnswer("", ev.finish_reason, self.tokens, self.splitter.thinking.strip())))
        else:
            c = ev.completion
            self.post(Done(PlainAnswer(c.text, c.finish_reason, c.num_tokens)))


class TTSJob(Job):
    def __init__(self, loop, prompt_ids, search: Search, *, stream: bool):
        super().__init__(loop, prompt_ids, stream=stream)
        self.search = search
        self.gen = None
        self.slots: dict[str, tuple[int, int]] = {}  # rid -> (request, sample) of the current round
        self.outs: list[list] = []
        self.round = 0
        self.emitted = ""  # fixed text already streamed
        self.splitter = ThinkSplitter()

    @property
    def strategy(self) -> str:
        return self.search.p.strategy

    def begin(self, tokenizer) -> None:
        self.gen = start(self.search, tokenizer)
        self._advance(None, tokenizer)

    def on_output(self, ev: StepEvent, tokenizer) -> None:
        if not ev.finished:
            return
        i, k = self.slots.pop(ev.request_id)
        self.outs[i][k] = ev.completion
        if not self.slots:  # the whole round is back
            self._advance(self.outs, tokenizer)

    def renamed(self, old: str, new: str) -> None:
        """A paused sequence runs again under a fresh id: its round slot follows it."""
        if old in self.slots:
            self.slots[new] = self.slots.pop(old)

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()

    def _advance(self, outputs, tokenizer) -> None:
        try:
            reqs: list[GenerationRequest] = self.gen.send(outputs)
        except StopIteration as stop:
            result = build_result(self.search, *stop.value, time.perf_counter() - self.start, tokenizer)
            if self.stream:
                self._stream_fixed(tokenizer, final_text=result.text)
            log.info("[%s] finished: %s after %d rounds", self.id, result.completion_reason.value, self.round)
            self.post(Done(result))
            return
        if self.stream:
            self._stream_fixed(tokenizer)
        self.round += 1
        if self.metrics is not None:
            self.metrics.tts_rounds.labels(self.strategy).inc()
        self.outs = [[None] * r.sampling.n for r in reqs]
        for i, r in enumerate(reqs):
            for k, spec in enumerate(r.samples()):  # the fan-out VLLMEngine.generate uses too
                rid = f"{self.id}-{self.round}-{i}-{k}"
                self.slots[rid] = (i, k)
                self.pending.append(Sequence(rid, r.prompt_ids, spec))

    def _stream_fixed(self, tokenizer, final_text: str | None = None) -> None:
        """Stream the text no later step can change (and, at the end, the rest of the answer)."""
        if final_text is None:
            ids = [t for s in self.search.fixed for t in s.token_ids]
            text = tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
        else:
            text = final_text
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            piece = self.splitter.feed(text[len(self.emitted):])
            self.emitted = text
            if piece:
                self.post(Delta(piece))
        if final_text is not None:
            tail = self.splitter.finish()
            if tail:
                self.post(Delta(tail))


def default_slots(engine: Engine) -> int:
    """Sequences the engine holds at once: what its KV cache holds at full length (4..64)."""
    kv = getattr(engine, "kv_cache_tokens", None) or 0
    return max(4, min(64, kv // max(1, engine.max_model_len))) if kv else 16


# -- the worker ---------------------------------------------------------------------------------------

class EngineWorker:
    def __init__(self, engine: Engine, max_active: int = 32, max_queued: int = 64, slots: int | None = None,
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
                self.incoming.get_nowait().post(Failed(Busy("the server is shutting down")))
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
                job.post(Failed(asyncio.CancelledError()))
                continue
            self.active[job.id] = job
            log.info("[%s] started: %s, %d prompt tokens", job.id, job.strategy, len(job.prompt_ids))
            job.metrics = self.metrics
            try:
                job.begin(self.engine.tokenizer)
                self._retire_if_done(job)
            except Exception as e:
                log.exception("[%s] failed to start", job.id)
                self._fail(job, e)

    # -- slots ------------------------------------------------------------------------
    def _add(self, job: Job, seq: Sequence) -> None:
        self.engine.add(seq.rid, seq.prompt_ids, seq.spec, stream=seq.stream)
        self.owner[seq.rid] = job
        job.running[seq.rid] = seq

    def _schedule(self) -> None:
        interactive = [j for j in self.active.values() if j.interactive]
        big = [j for j in self.active.values() if not j.interactive]
        for j in interactive:  # always let in: one sequence each
            while j.pending:
                self._add(j, j.pending.popleft())
        if not big:
            return
        in_use = sum(len(j.running) for j in interactive)
        now = time.monotonic()
        if any(j.running for j in interactive):
            self._last_interactive = now
        waiting = now - self._last_interactive < self.grace_s
        quota = self.interactive_share if waiting else max(1, (self.slots - in_use) // len(big))
        for j in big:
            if waiting:
                self._pause(j, len(j.running) - quota)
        free = self.slots - sum(len(j.running) for j in self.active.values())
        for j in sorted(big, key=lambda j: len(j.running)):  # the job with the fewest sequences first
            while len(j.running) < quota and j.pending and (free > 0 or not j.running):
                self._add(j, j.pending.popleft())
                free -= 1

    def _pause(self, job: Job, n: int) -> None:
        """Take the job's `n` newest sequences out of the engine; they run again later, from the start."""
        if n <= 0:
            return
        victims = sorted(job.running)[-n:]
        self.engine.abort(victims)
        for rid in reversed(victims):
            seq = job.running.pop(rid)
            self.owner.pop(rid, None)
            new = f"{rid.split('~')[0]}~{job.paused}"  # the engine must see a fresh id
            job.paused += 1
            job.renamed(rid, new)
            job.pending.appendleft(dataclasses.replace(seq, rid=new))
        if self.metrics is not None:
            self.metrics.preemptions.inc(n)
        log.info("[%s] paused %d sequence(s) for interactive requests", job.id, n)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self.active.values() if j.cancelled.is_set()]:
            self._fail(job, asyncio.CancelledError(), "cancelled by the client")

    def _drop(self, job: Job) -> None:
        for rid in job.running:
            self.owner.pop(rid, None)
        job.running.clear()
        job.pending.clear()
        self.active.pop(job.id, None)

    def _fail(self, job: Job, exc: BaseException, why: str | None = None) -> None:
        """End a job early: its sequences leave the engine, its strategy generator is closed."""
        self.engine.abort(sorted(job.running))
        self._drop(job)
        job.close()
        log.info("[%s] %s", job.id, why or f"failed: {exc}")
        job.post(Failed(exc))

    # -- routing engine output ---------------------------------------------------
    def _route(self, job: Job, ev: StepEvent) -> None:
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(job.generated_tokens(ev))
        if ev.finished:
            job.running.pop(ev.request_id, None)
            self.owner.pop(ev.request_id, None)
        job.on_output(ev, self.engine.tokenizer)
        self._retire_if_done(job)

    def _retire_if_done(self, job: Job) -> None:
        if job.finished:
            self._drop(job)
