"""The OpenAI-compatible app's routes: /v1/chat/completions (and per-strategy routes), /v1/models,
the step tree of a TTS request, /health, /metrics, and the subchat under /api.

Routes only: requests and responses are `kaggle_kit.service.protocol`'s models, and a `ChatServing`
(kaggle_kit.service.serving) given the current engine answers them. The engine comes from
`engine_provider()` (default: the registered model) on every request, so a model loaded or swapped
in the notebook after the server started is served from then on.
"""
from __future__ import annotations

import os
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from kaggle_kit.engine.registry import registered_engine
from kaggle_kit.engine.types import Engine
from kaggle_kit.service import limits as limits_mod
from kaggle_kit.service.errors import ApiError, install
from kaggle_kit.service.metrics import ServiceMetrics
from kaggle_kit.service.naming import default_served_name
from kaggle_kit.service.protocol import ChatCompletionRequest, ModelCard, ModelList, wire
from kaggle_kit.service.serving import ChatServing


class ServiceState:
    """The server's settings and metrics, and the serving object of the engine it serves now."""

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
        self.current: ChatServing | None = None

    def serving(self) -> ChatServing:
        engine = self.engine_provider()
        if engine is None:
            raise ApiError(503, "no model is loaded: call kk.ensure_model() (or start with --model)",
                           type="service_unavailable_error", code="model_not_loaded")
        if self.current is None or self.current.engine is not engine:  # first use, or the model was swapped
            if self.current is not None:
                self.current.stop()
            self.current = ChatServing(
                engine, self.model_name(engine), strict=self.strict,
                limits=limits_mod.Limits.for_engine(engine, **self.limit_overrides), metrics=self.metrics,
                max_active=self.max_active, max_queued=self.max_queued, slots=self.slots,
                interactive_share=self.interactive_share)
        return self.current

    def model_name(self, engine: Engine) -> str:
        return self.served_model_name or default_served_name(engine.model_name)

    def shutdown(self) -> None:
        if self.current is not None:
            self.current.stop()


def create_app(engine_provider: Callable | None = None, api_key: str | None = None,
               served_model_name: str | None = None, strict: bool = False, max_active: int = 32,
               max_queued: int = 64, subchat_store=None, subchat_client=None, limits: dict | None = None,
               slots: int | None = None, interactive_share: int = 1) -> FastAPI:
    """The app; the engine comes from `engine_provider()` (default: the registered model).

    strict: refuse another model name (404) and a max_tokens over the window (400)
    instead of serving them with the adjustment reported. limits: overrides for
    `Limits` (its fields). slots / interactive_share: see `EngineWorker`. /api serves the
    subchat from `subchat_store` (a path or a store; default `kk.subchat.open_store()`) with
    `subchat_client` (default: the backend chain).
    """
    state = ServiceState(engine_provider or registered_engine,
                         api_key if api_key is not None else os.environ.get("KK_API_KEY") or None,
                         served_model_name, strict, max_active, max_queued, limits, slots, interactive_share)
    app = FastAPI(title="kaggle_kit TTS service", version="1")
    app.state.kk = state
    install(app)
    app.router.add_event_handler("shutdown", state.shutdown)

    def auth(request: Request) -> None:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    from kaggle_kit.service.subchat_api import router

    app.include_router(router(subchat_store, subchat_client, auth))

    @app.get("/health")
    def health():
        engine = state.engine_provider()
        if engine is None:
            return JSONResponse({"status": "no_model"}, status_code=503)
        current = state.current if state.current is not None and state.current.engine is engine else None
        active, queued = current.worker.load if current else (0, 0)  # a health check starts no worker
        return {"status": "ok", "model": state.model_name(engine), "active": active, "queued": queued}

    @app.get("/metrics")
    def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(auth)])
    def models():
        serving = state.serving()
        card = ModelCard(id=serving.model_name, max_model_len=serving.engine.max_model_len,
                         kv_cache_tokens=getattr(serving.engine, "kv_cache_tokens", None))
        return wire(ModelList(data=[card]))

    @app.get("/v1/tts/{request_id}/tree", dependencies=[Depends(auth)])
    def step_tree(request_id: str):
        """The step tree of a TTS request this server answered (X-Request-Id), as a page."""
        from kaggle_kit.pages import step_tree as view

        result = state.serving().tree(request_id)
        return HTMLResponse(view.page(result, f"{result.strategy}/{result.scorer} · {request_id}"))

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await state.serving().create_chat_completion(body, request)

    # llm-tts-service's routes: the strategy (and scorer) in the path, for clients that cannot send
    # extra body fields; the path's choice is the request's tts_strategy (and tts_scorer).
    @app.post("/v1/{strategy}/chat/completions", dependencies=[Depends(auth)])
    async def strategy_chat_completions(strategy: str, body: ChatCompletionRequest, request: Request):
        return await state.serving().create_chat_completion(body.routed(strategy), request)

    @app.post("/v1/{strategy}/{scorer}/chat/completions", dependencies=[Depends(auth)])
    async def strategy_scorer_chat_completions(strategy: str, scorer: str, body: ChatCompletionRequest,
                                               request: Request):
        return await state.serving().create_chat_completion(body.routed(strategy, scorer), request)

    return app
