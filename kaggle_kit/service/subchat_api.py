"""/api: the hierarchical subchat over HTTP, in the same app as /v1.

    POST /api/conversations                {title, system_prompt?}           -> node
    GET  /api/conversations                                                  -> [node]
    GET  /api/conversations/{id}/tree                                        -> nested tree
    GET  /api/nodes/{id}                                                     -> node, messages, children
    GET  /api/nodes/{id}/context                                             -> the messages the next turn sends
    POST /api/nodes/{id}/messages          {content, stream?, max_tokens?, temperature?, enable_thinking?}
                                           -> {user, assistant}, or SSE: {"delta"}... {"message"} [DONE]
    POST /api/nodes/{id}/branches          {from_message_id, title?}          -> node
Errors have the /v1 shape: 404 unknown node or message, 400 bad input, 503 no backend answered.
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from kaggle_kit.service.errors import ApiError


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1)
    system_prompt: str | None = None


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    enable_thinking: bool | None = None


class NewBranch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_message_id: int
    title: str | None = None


def _options(body: NewMessage) -> dict:
    return {k: v for k, v in (("max_tokens", body.max_tokens), ("temperature", body.temperature),
                              ("enable_thinking", body.enable_thinking)) if v is not None}


def router(subchat_store=None, subchat_client=None, auth=None) -> APIRouter:
    """The /api routes over `subchat_store` (a path or a store; default `kk.subchat.open_store()`),
    answered by `subchat_client` (default: the backend chain); both made on first use."""
    api = APIRouter(prefix="/api", dependencies=[Depends(auth)] if auth else [])
    lazy: dict = {}

    def store_provider():
        if "store" not in lazy:
            from kaggle_kit.subchat.store import SubchatStore, open_store

            lazy["store"] = subchat_store if isinstance(subchat_store, SubchatStore) else open_store(subchat_store)
        return lazy["store"]

    def client_provider():
        if "client" not in lazy:
            from kaggle_kit.chat.client import SimpleLLMClient

            lazy["client"] = subchat_client or SimpleLLMClient()
        return lazy["client"]

    def node(node_id: int):
        try:
            return store_provider().get(node_id)
        except KeyError as e:
            raise ApiError(404, str(e).strip("'"), type="not_found_error", param="node_id") from None

    @api.get("/conversations")
    def conversations():
        return [n.to_dict() for n in store_provider().conversations()]

    @api.post("/conversations", status_code=201)
    def new_conversation(body: NewConversation):
        return store_provider().new_conversation(body.title, body.system_prompt).to_dict()

    @api.get("/conversations/{root_id}/tree")
    def tree(root_id: int):
        try:
            return store_provider().tree(root_id)
        except KeyError as e:
            raise ApiError(404, str(e).strip("'"), type="not_found_error") from None

    @api.get("/nodes/{node_id}")
    def get_node(node_id: int):
        n = node(node_id)
        return {"node": n.to_dict(), "messages": [m.to_dict() for m in n.messages],
                "children": [c.to_dict() for c in n.children()]}

    @api.get("/nodes/{node_id}/context")
    def context(node_id: int, max_tokens: int = 1024):
        return node(node_id).context(max_tokens=max_tokens)

    @api.post("/nodes/{node_id}/branches", status_code=201)
    def branch(node_id: int, body: NewBranch):
        n = node(node_id)
        try:
            return n.branch(body.from_message_id, body.title).to_dict()
        except KeyError as e:
            raise ApiError(404, str(e).strip("'"), type="not_found_error", param="from_message_id") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="from_message_id") from None

    @api.post("/nodes/{node_id}/messages")
    def post_message(node_id: int, body: NewMessage):
        n = node(node_id)
        client = client_provider()
        options = _options(body)
        if body.stream:
            return StreamingResponse(_sse(client, n, body.content, options), media_type="text/event-stream")
        from kaggle_kit.chat.types import AllBackendsFailed

        try:
            reply = n.reply(client, body.content, **options)
        except AllBackendsFailed as e:
            raise ApiError(503, str(e), type="service_unavailable_error", code="no_backend") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="content") from None
        user = [m for m in n.messages if m.role == "user"][-1]
        return JSONResponse({"user": user.to_dict(), "assistant": reply.to_dict()})

    return api


def _sse(client, node, content: str, options: dict):
    """Runs in Starlette's thread pool (a sync generator), so generation never blocks the event loop."""
    try:
        for piece in node.reply_stream(client, content, **options):
            yield f"data: {json.dumps({'delta': piece})}\n\n"
        last = node.messages[-1]
        yield f"data: {json.dumps({'message': last.to_dict()})}\n\n"
    except Exception as e:
        from kaggle_kit.chat.types import AllBackendsFailed

        err = ApiError(503 if isinstance(e, AllBackendsFailed) else 500, f"{type(e).__name__}: {e}")
        yield f"data: {json.dumps(err.body())}\n\n"
    yield "data: [DONE]\n\n"
