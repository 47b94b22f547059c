"""The OpenAI-compatible app: /v1/chat/completions with tts_* fields, /v1/models, /health, /metrics.

What each request streams (stream=true):
  plain generation  tokens as the engine produces them;
  online_bon        each step's text once it is chosen;
  beam_search, dvts text once every beam still in the running shares it (often
                    late: beams diverge early), the rest when the search ends;
  offline_bon       the whole chosen answer when the search ends.
Thinking text (enable_thinking) goes to `reasoning_content`, never `content`.

Requests as clients send them (their own model id, max_tokens 8000 or 16000 against a
5120-token window) are served by default: the server substitutes its model and shrinks
max_tokens, and says so in `kk_adjustments` (and `tts_metadata.adjustments`) and the
`X-KK-Adjusted` header. `strict=True` (`--strict`) answers 404 and 400 instead.
Every request's work is checked against `Limits` before it starts.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from kaggle_kit.chat.messages import prompt_ids, split_thinking, validate_messages
from kaggle_kit.engine.types import SamplingSpec
from kaggle_kit.service import limits as limits_mod
from kaggle_kit.service.errors import ApiError, install
from kaggle_kit.service.metrics import ServiceMetrics
from kaggle_kit.service.naming import default_served_name
from kaggle_kit.service.schemas import (Adjustment, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                                        ChunkChoice, ChunkDelta, ModelCard, ModelList, ResponseMessage, TTSMetadata,
                                        Usage, wire)
from kaggle_kit.service.worker import Busy, EngineWorker, Event, Job
from kaggle_kit.tts.params import STRATEGIES, WIRE_FIELDS, TTSParams, wire_name
from kaggle_kit.tts.scorers import SCORERS
from kaggle_kit.tts.results import CompletionReason, StrategyResult
from kaggle_kit.tts.search import Search

log = logging.getLogger(__name__)
KEPT_TREES = 256  # TTS results kept for GET /v1/tts/{request_id}/tree


def _registered_engine():
    from kaggle_kit.engine.registry import ModelRegistry

    return ModelRegistry.get_engine() if ModelRegistry.is_ready() else None


class ServiceState:
    def __init__(self, engine_provider: Callable, api_key: str | None, served_model_name: str | None,
                 strict: bool, max_active: int, max_queued: int, limits: dict | None, slots: int | None,
                 interactive_share: int):
        self.engine_provider = engine_provider
        self.api_key = api_key
        self.served_model_name = served_model_name
        self.strict = strict
        self.max_active, self.max_queued = max_active, max_queued
        self.limit_overrides = limits or {}
        self.slots, self.interactive_share = slots, interactive_share
        self.metrics = ServiceMetrics()
        self.worker: EngineWorker | None = None
        self.limits: limits_mod.Limits | None = None
        self.trees: OrderedDict[str, StrategyResult] = OrderedDict()  # the last TTS results, for their tree page

    def keep(self, request_id: str, done) -> None:
        if isinstance(done, StrategyResult):
            self.trees[request_id] = done
            while len(self.trees) > KEPT_TREES:
                self.trees.popitem(last=False)

    def engine(self):
        engine = self.engine_provider()
        if engine is None:
            raise ApiError(503, "no model is loaded: call kk.ensure_model() (or start with --model)",
                           type="service_unavailable_error", code="model_not_loaded")
        if self.worker is None or self.worker.engine is not engine:  # first use, or the model was swapped
            if self.worker is not None:
                self.worker.stop()
            self.worker = EngineWorker(engine, self.max_active, self.max_queued, slots=self.slots,
                                       interactive_share=self.interactive_share, metrics=self.metrics)
            self.limits = limits_mod.Limits.for_engine(engine, **self.limit_overrides)
        return engine

    def model_name(self, engine) -> str:
        return self.served_model_name or default_served_name(engine.model_name)

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def create_app(engine_provider: Callable | None = None, api_key: str | None = None,
               served_model_name: str | None = None, strict: bool = False, max_active: int = 32,
               max_queued: int = 64, subchat_store=None, subchat_client=None, limits: dict | None = None,
               slots: int | None = None, interactive_share: int = 1) -> FastAPI:
    """The app; the engine comes from `engine_provider()` (default: the registered model).

    strict: refuse another model name (404) and a max_tokens over the window (400)
    instead of serving them with the adjustment reported. limits: overrides for
    `Limits` (max_sequences, max_steps, max_kv_tokens). slots / interactive_share:
    see `EngineWorker`. /api serves the subchat from `subchat_store` (a path or a store;
    default `kk.subchat.open_store()`) with `subchat_client` (default: the backend chain).
    """
    state = ServiceState(engine_provider or _registered_engine,
                         api_key if api_key is not None else os.environ.get("KK_API_KEY") or None,
                         served_model_name, strict, max_active, max_queued, limits, slots, interactive_share)
    app = FastAPI(title="kaggle_kit TTS service", version="1")
    app.state.kk = state
    install(app)
    app.router.add_event_handler("shutdown", state.shutdown)

    def auth(request: Request) -> None:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    lazy: dict = {}

    def store():
        if "store" not in lazy:
            from kaggle_kit.subchat.store import SubchatStore, open_store

            lazy["store"] = subchat_store if isinstance(subchat_store, SubchatStore) else open_store(subchat_store)
        return lazy["store"]

    def chat_client():
        if "client" not in lazy:
            from kaggle_kit.chat.client import SimpleLLMClient

            lazy["client"] = subchat_client or SimpleLLMClient()
        return lazy["client"]

    from kaggle_kit.service.subchat_api import router

    app.include_router(router(store, chat_client, auth))

    @app.get("/health")
    def health():
        engine = state.engine_provider()
        if engine is None:
            return JSONResponse({"status": "no_model"}, status_code=503)
        active, queued = state.worker.load if state.worker else (0, 0)
        return {"status": "ok", "model": state.model_name(engine), "active": active, "queued": queued}

    @app.get("/metrics")
    def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(auth)])
    def models():
        engine = state.engine()
        card = ModelCard(id=state.model_name(engine), max_model_len=engine.max_model_len,
                         kv_cache_tokens=getattr(engine, "kv_cache_tokens", None))
        return wire(ModelList(data=[card]))

    @app.get("/v1/tts/{request_id}/tree", dependencies=[Depends(auth)])
    def step_tree(request_id: str):
        """The step tree of a TTS request this server answered (X-Request-Id), as a page."""
        from kaggle_kit.pages import step_tree as view

        result = state.trees.get(request_id)
        if result is None:
            raise ApiError(404, f"no TTS result for request {request_id!r} here: the server keeps the last "
                                f"{KEPT_TREES} (plain requests have no tree)", type="not_found_error",
                           code="unknown_request")
        return HTMLResponse(view.page(result, f"{result.strategy}/{result.scorer} · {request_id}"))

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        started = time.perf_counter()
        strategy = body.tts_strategy or "plain"
        try:
            response = await _chat(body, request)
        except ApiError as e:
            state.metrics.requests.labels(str(e.status), strategy).inc()
            raise
        if not isinstance(response, StreamingResponse):
            state.metrics.requests.labels("200", strategy).inc()
            state.metrics.latency.labels(strategy).observe(time.perf_counter() - started)
        return response

    # llm-tts-service's routes: the strategy (and scorer) in the path, for clients that cannot send
    # extra body fields; the path's choice is the request's tts_strategy (and tts_scorer).
    @app.post("/v1/{strategy}/chat/completions", dependencies=[Depends(auth)])
    async def strategy_chat_completions(strategy: str, body: ChatCompletionRequest, request: Request):
        return await chat_completions(_routed(body, strategy, None), request)

    @app.post("/v1/{strategy}/{scorer}/chat/completions", dependencies=[Depends(auth)])
    async def strategy_scorer_chat_completions(strategy: str, scorer: str, body: ChatCompletionRequest,
                                               request: Request):
        return await chat_completions(_routed(body, strategy, scorer), request)

    async def _chat(body: ChatCompletionRequest, request: Request):
        engine = state.engine()
        name = state.model_name(engine)
        adjustments: list[Adjustment] = []
        if body.model not in (name, engine.model_name):
            if state.strict:
                raise ApiError(404, f"model {body.model!r} is not served here; this server serves {name!r}",
                               type="not_found_error", param="model", code="model_not_found")
            adjustments.append(Adjustment(field="model", requested=body.model, used=name,
                                          reason="this server serves one model; the request's model id is not checked "
                                                 "(start the server with --strict to refuse it)"))
        try:
            msgs = validate_messages([m.as_chat() for m in body.messages])
        except (TypeError, ValueError) as e:
            raise ApiError(400, str(e), param="messages") from None
        ids = prompt_ids(engine.tokenizer, msgs, body.enable_thinking)
        max_tokens = _check_context(len(ids), body.requested_max_tokens, engine.max_model_len, not state.strict)
        if body.requested_max_tokens is not None and max_tokens != body.requested_max_tokens:
            adjustments.append(Adjustment(
                field="max_tokens", requested=body.requested_max_tokens, used=max_tokens,
                reason=f"the window is {engine.max_model_len} tokens and the prompt takes {len(ids)}"))
        loop = asyncio.get_running_loop()
        if body.tts_strategy is None:
            spec = SamplingSpec(
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0,
                max_tokens=max_tokens, stop=tuple(body.stop or ()), include_stop_str_in_output=False, seed=body.seed)
            job = Job(loop, ids, stream=body.stream, spec=spec)
        else:
            try:
                params = TTSParams.of(max_tokens=max_tokens, **body.tts_params())
            except (TypeError, ValueError) as e:
                raise ApiError(400, str(e), param=_param_of(str(e))) from None
            limits_mod.check(state.limits, params, len(ids))
            job = Job(loop, ids, stream=body.stream, search=Search(ids, params, engine.max_model_len, engine.eos_token_ids))
        try:
            state.worker.submit(job)
        except Busy as e:
            raise ApiError(429, str(e), type="rate_limit_error", code="server_busy") from None
        meta = {"id": f"chatcmpl-{job.id}", "created": int(time.time()), "model": name}
        headers = {"X-Request-Id": job.id}
        if adjustments:
            headers["X-KK-Adjusted"] = ",".join(a.field for a in adjustments)
            log.info("[%s] adjusted: %s", job.id, "; ".join(f"{a.field} {a.requested!r} -> {a.used!r}" for a in adjustments))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(job, state, meta, len(ids), include_usage, adjustments),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})
        return await _complete(job, state, meta, len(ids), request, adjustments, headers)

    return app


def _routed(body: ChatCompletionRequest, strategy: str, scorer: str | None) -> ChatCompletionRequest:
    """The request a /v1/{strategy}[/{scorer}]/chat/completions route stands for."""
    if strategy not in STRATEGIES:
        raise ApiError(404, f"no route for strategy {strategy!r}; the routes are /v1/{{strategy}}/chat/completions "
                            f"with strategy one of {', '.join(STRATEGIES)}", type="not_found_error", code="unknown_route")
    if scorer is not None and scorer not in SCORERS:
        raise ApiError(404, f"no route for scorer {scorer!r}; choose from {', '.join(SCORERS)}",
                       type="not_found_error", code="unknown_route")
    for field, routed in (("tts_strategy", strategy), ("tts_scorer", scorer)):
        sent = getattr(body, field)
        if routed is not None and sent is not None and sent != routed:
            raise ApiError(400, f"{field}={sent!r} contradicts the route's {routed!r}: send one or the other",
                           param=field)
    return body.model_copy(update={"tts_strategy": strategy, "tts_scorer": scorer or body.tts_scorer})


def _check_context(prompt_len: int, requested: int | None, window: int, clamp: bool) -> int:
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


def _param_of(message: str) -> str | None:
    """The request field a TTSParams error is about."""
    return next((wire_name(f) for f in WIRE_FIELDS if f in message), None)


def _finish_reason(result: StrategyResult) -> str:
    if result.completion_reason in (CompletionReason.EOS, CompletionReason.STOP):
        return "stop"
    if result.completion_reason is CompletionReason.MAX_STEPS and result.steps and result.steps[-1].finish in ("eos", "stop"):
        return "stop"
    return "length"


def _tts_metadata(result: StrategyResult, adjustments: list[Adjustment]) -> TTSMetadata:
    data = result.to_dict()
    return TTSMetadata(**{k: data[k] for k in ("strategy", "scorer", "aggregated_score", "completion_reason", "steps",
                                               "candidates", "usage", "elapsed_s")}, adjustments=adjustments)


def _payload(done: dict | StrategyResult, adjustments: list[Adjustment]) -> tuple[ResponseMessage, str, TTSMetadata | None]:
    """(message, finish_reason, tts_metadata) of a finished job."""
    if isinstance(done, StrategyResult):
        thinking, answer = split_thinking(done.text)
        return (ResponseMessage(content=answer, reasoning_content=thinking or None), _finish_reason(done),
                _tts_metadata(done, adjustments))
    thinking, answer = split_thinking(done.get("text", ""))
    reasoning = done.get("thinking") or thinking
    return ResponseMessage(content=answer, reasoning_content=reasoning or None), done["finish_reason"] or "stop", None


def _completion_tokens(done: dict | StrategyResult) -> int:
    return done.num_tokens if isinstance(done, StrategyResult) else done["completion_tokens"]


async def _next(job: Job, request: Request | None) -> Event:
    """The job's next event; a client that went away cancels the job."""
    while True:
        try:
            return await asyncio.wait_for(job.events.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if request is not None and await request.is_disconnected():
                raise asyncio.CancelledError()


async def _complete(job: Job, state: ServiceState, meta: dict, prompt_tokens: int, request: Request,
                    adjustments: list[Adjustment], headers: dict):
    worker = state.worker
    try:
        while True:
            ev = await _next(job, request)
            if ev.kind == "error":
                raise _as_api_error(ev.payload)
            if ev.kind == "done":
                break
    except asyncio.CancelledError:
        worker.cancel(job)
        raise
    done = ev.payload
    state.keep(job.id, done)
    message, finish, tts = _payload(done, adjustments)
    body = ChatCompletion(**meta, choices=[Choice(message=message, finish_reason=finish)],
                          usage=Usage.of(prompt_tokens, _completion_tokens(done)), tts_metadata=tts,
                          kk_adjustments=adjustments or None)
    return JSONResponse(wire(body), headers=headers)


def _as_api_error(exc) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Busy):
        return ApiError(503, str(exc), type="service_unavailable_error", code="shutting_down")
    if isinstance(exc, asyncio.CancelledError):
        return ApiError(499, "request cancelled", code="cancelled")
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def _event(chunk: ChatCompletionChunk) -> str:
    return f"data: {json.dumps(wire(chunk))}\n\n"


async def _sse(job: Job, state: ServiceState, meta: dict, prompt_tokens: int, include_usage: bool,
               adjustments: list[Adjustment]):
    """OpenAI chat.completion.chunk events; closing the connection cancels the job."""
    finished = False
    status = "200"
    try:
        yield _event(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=ChunkDelta(role="assistant", content=""))]))
        while True:
            ev = await job.events.get()
            if ev.kind == "delta":
                yield _event(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=ChunkDelta(content=ev.text))]))
            elif ev.kind == "error":
                finished = True
                err = _as_api_error(ev.payload)
                status = str(err.status)
                yield f"data: {json.dumps(err.body())}\n\n"
                break
            else:
                finished = True
                done = ev.payload
                state.keep(job.id, done)
                message, finish, tts = _payload(done, adjustments)
                delta = ChunkDelta(reasoning_content=message.reasoning_content)
                yield _event(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                                                 tts_metadata=tts, kk_adjustments=adjustments or None))
                if include_usage:
                    usage = Usage.of(prompt_tokens, _completion_tokens(done))
                    yield _event(ChatCompletionChunk(**meta, choices=[], usage=usage))
                break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            status = "499"
            state.worker.cancel(job)  # the client went away mid-stream: stop its work
        state.metrics.requests.labels(status, job.strategy).inc()
        state.metrics.latency.labels(job.strategy).observe(time.perf_counter() - job.start)
