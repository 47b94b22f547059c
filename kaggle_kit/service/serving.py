"""Serving /v1/chat/completions for one engine (as vLLM's serving classes are given their EngineClient).

A request is checked (model name, messages, context window, the work it asks for), becomes a job
for the engine's worker, and its answer is sent back whole or as server-sent events:
  plain generation  tokens as the engine produces them;
  online_bon        each step's text once it is chosen;
  beam_search, dvts text once every beam still in the running shares it (often late: beams
                    diverge early), the rest when the search ends;
  the others        the whole chosen answer when the search ends.
Thinking text (enable_thinking) goes to `reasoning_content`, never `content`.

Requests as clients send them (their own model id, max_tokens 8000 or 16000 against a 5120-token
window) are served by default: the server substitutes its model and shrinks max_tokens, and says so
in `kk_adjustments` (and `tts_metadata.adjustments`) and the `X-KK-Adjusted` header. `strict`
answers 404 and 400 instead. Every TTS request's work is checked against `Limits` before it starts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kaggle_kit.engine.chat_template import prompt_ids
from kaggle_kit.engine.types import Engine
from kaggle_kit.service import limits as limits_mod
from kaggle_kit.service.errors import ApiError
from kaggle_kit.service.metrics import ServiceMetrics
from kaggle_kit.service.protocol import (Adjustment, Answer, ChatCompletion, ChatCompletionChunk, Choice,
                                         ChunkChoice, ChunkDelta, Usage, wire)
from kaggle_kit.service.worker import Busy, Delta, Done, EngineWorker, Failed, Job, PlainJob, TTSJob
from kaggle_kit.tts.results import StrategyResult
from kaggle_kit.tts.search import Search

log = logging.getLogger(__name__)
KEPT_TREES = 256  # TTS results kept for GET /v1/tts/{request_id}/tree


class ChatServing:
    """Chat completions on `engine`, through its worker (which owns every engine step)."""

    def __init__(self, engine: Engine, model_name: str, *, strict: bool, limits: limits_mod.Limits,
                 metrics: ServiceMetrics, max_active: int, max_queued: int, slots: int | None, interactive_share: int):
        self.engine, self.model_name, self.strict, self.limits, self.metrics = engine, model_name, strict, limits, metrics
        self.worker = EngineWorker(engine, max_active, max_queued, slots=slots, interactive_share=interactive_share,
                                   metrics=metrics)
        self.trees: OrderedDict[str, StrategyResult] = OrderedDict()  # the last TTS results, for their tree page

    def stop(self) -> None:
        self.worker.stop()

    def tree(self, request_id: str) -> StrategyResult:
        result = self.trees.get(request_id)
        if result is None:
            raise ApiError(404, f"no TTS result for request {request_id!r} here: the server keeps the last "
                                f"{KEPT_TREES} (plain requests have no tree)", type="not_found_error",
                           code="unknown_request")
        return result

    async def create_chat_completion(self, body, request: Request):
        started = time.perf_counter()
        try:
            job, adjustments = self._job(body)
            self.worker.submit(job)
        except Busy as e:
            self.metrics.requests.labels("429", body.strategy).inc()
            raise ApiError(429, str(e), type="rate_limit_error", code="server_busy") from None
        except ApiError as e:
            self.metrics.requests.labels(str(e.status), body.strategy).inc()
            raise
        meta = {"id": f"chatcmpl-{job.id}", "created": int(time.time()), "model": self.model_name}
        headers = {"X-Request-Id": job.id}
        if adjustments:
            headers["X-KK-Adjusted"] = ",".join(a.field for a in adjustments)
            log.info("[%s] adjusted: %s", job.id, "; ".join(f"{a.field} {a.requested!r} -> {a.used!r}" for a in adjustments))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._events(job, meta, include_usage, adjustments), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", **headers})
        try:
            response = await self._complete(job, meta, request, adjustments, headers)
        except ApiError as e:
            self.metrics.requests.labels(str(e.status), job.strategy).inc()
            raise
        self.metrics.requests.labels("200", job.strategy).inc()
        self.metrics.latency.labels(job.strategy).observe(time.perf_counter() - started)
        return response

    # -- the request -> a job ---------------------------------------------------------------------
    def _job(self, body) -> tuple[Job, list[Adjustment]]:
        engine, adjustments = self.engine, []
        if body.model not in (self.model_name, engine.model_name):
            if self.strict:
                raise ApiError(404, f"model {body.model!r} is not served here; this server serves {self.model_name!r}",
                               type="not_found_error", param="model", code="model_not_found")
            adjustments.append(Adjustment(field="model", requested=body.model, used=self.model_name,
                                          reason="this server serves one model; the request's model id is not checked "
                                                 "(start the server with --strict to refuse it)"))
        ids = prompt_ids(engine.tokenizer, body.chat_messages(), body.enable_thinking)
        max_tokens = _fit_context(len(ids), body.requested_max_tokens, engine.max_model_len, not self.strict)
        if body.requested_max_tokens is not None and max_tokens != body.requested_max_tokens:
            adjustments.append(Adjustment(
                field="max_tokens", requested=body.requested_max_tokens, used=max_tokens,
                reason=f"the window is {engine.max_model_len} tokens and the prompt takes {len(ids)}"))
        loop = asyncio.get_running_loop()
        if body.tts_strategy is None:
            return PlainJob(loop, ids, body.to_sampling_spec(max_tokens), stream=body.stream), adjustments
        params = body.to_tts_params(max_tokens)
        limits_mod.check(self.limits, params, len(ids))
        search = Search(ids, params, engine.max_model_len, engine.eos_token_ids)
        return TTSJob(loop, ids, search, stream=body.stream), adjustments

    # -- answers ------------------------------------------------------------------------------------
    def _keep(self, job: Job, answer) -> None:
        if isinstance(answer, StrategyResult):
            self.trees[job.id] = answer
            while len(self.trees) > KEPT_TREES:
                self.trees.popitem(last=False)

    async def _complete(self, job: Job, meta: dict, request: Request, adjustments: list[Adjustment], headers: dict):
        try:
            while True:
                ev = await _next(job, request)
                if isinstance(ev, Failed):
                    raise _as_api_error(ev.error)
                if isinstance(ev, Done):
                    break
        except asyncio.CancelledError:
            self.worker.cancel(job)
            raise
        self._keep(job, ev.result)
        answer = Answer.of(ev.result, adjustments)
        body = ChatCompletion(**meta, choices=[Choice(message=answer.message, finish_reason=answer.finish_reason)],
                              usage=Usage.of(len(job.prompt_ids), answer.completion_tokens),
                              tts_metadata=answer.tts_metadata, kk_adjustments=adjustments or None)
        return JSONResponse(wire(body), headers=headers)

    async def _events(self, job: Job, meta: dict, include_usage: bool, adjustments: list[Adjustment]):
        """OpenAI chat.completion.chunk events; closing the connection cancels the job."""
        finished, status = False, "200"
        try:
            yield _sse(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))]))
            while True:
                ev = await job.events.get()
                if isinstance(ev, Delta):
                    yield _sse(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=ChunkDelta(content=ev.text))]))
                    continue
                finished = True
                if isinstance(ev, Failed):
                    err = _as_api_error(ev.error)
                    status = str(err.status)
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                self._keep(job, ev.result)
                answer = Answer.of(ev.result, adjustments)
                delta = ChunkDelta(reasoning_content=answer.message.reasoning_content)
                yield _sse(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=delta, finish_reason=answer.finish_reason)],
                                               tts_metadata=answer.tts_metadata, kk_adjustments=adjustments or None))
                if include_usage:
                    usage = Usage.of(len(job.prompt_ids), answer.completion_tokens)
                    yield _sse(ChatCompletionChunk(**meta, choices=[], usage=usage))
                break
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                status = "499"
                self.worker.cancel(job)  # the client went away mid-stream: stop its work
            self.metrics.requests.labels(status, job.strategy).inc()
            self.metrics.latency.labels(job.strategy).observe(time.perf_counter() - job.start)


def _fit_context(prompt_len: int, requested: int | None, window: int, clamp: bool) -> int:
    """The max_tokens a request gets: what it asked for if it fits the window, else (lenient) what fits."""
    room = window - prompt_len
    if room < 1:
        raise ApiError(400, f"This model's maximum context length is {window} tokens. However, your messages "
                            f"resulted in {prompt_len} tokens. Please reduce the length of the messages.",
                       param="messages", code="context_length_exceeded")
    if requested is None:
        return room
    if requested > room and not clamp:
        raise ApiError(400, f"This model's maximum context length is {window} tokens. However, you requested "
                            f"{prompt_len + requested} tokens ({prompt_len} in the messages, {requested} in the "
                            f"completion). Please reduce the length of the messages or the completion.",
                       param="max_tokens", code="context_length_exceeded")
    return min(requested, room)


async def _next(job: Job, request: Request | None):
    """The job's next event; a client that went away cancels the job."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if request is not None and await request.is_disconnected():
                raise asyncio.CancelledError()


def _as_api_error(exc) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Busy):
        return ApiError(503, str(exc), type="service_unavailable_error", code="shutting_down")
    if isinstance(exc, asyncio.CancelledError):
        return ApiError(499, "request cancelled", code="cancelled")
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def _sse(chunk: ChatCompletionChunk) -> str:
    return f"data: {json.dumps(wire(chunk))}\n\n"
