"""Start the service: `kk.serve()` in a background thread (notebooks), or blocking (CLI)."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class ServerHandle:
    def __init__(self, server, thread: threading.Thread, host: str, port: int):
        self.server, self.thread, self.host, self.port = server, thread, host, port

    @property
    def url(self) -> str:
        """The OpenAI base URL (…/v1)."""
        return f"http://{self.host}:{self.port}/v1"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop accepting, finish or cancel in-flight requests, free the port."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)

    def __repr__(self) -> str:
        return f"<kaggle_kit server {self.url} {'running' if self.thread.is_alive() else 'stopped'}>"


def serve(port: int = 8001, host: str = "127.0.0.1", *, api_key: str | None = None,
          served_model_name: str | None = None, strict: bool = False, max_active: int = 32,
          max_queued: int = 64, block: bool = False, log_level: str = "warning", engine_provider=None,
          subchat_store=None, subchat_client=None, limits: dict | None = None, slots: int | None = None,
          interactive_share: int = 1):
    """Serve the registered model (or `engine_provider()`) over OpenAI's API.

    Binds loopback unless told otherwise; `api_key` (or $KK_API_KEY) turns on
    bearer auth. strict: 404 for another model id and 400 for a max_tokens over the
    window, instead of serving and reporting the adjustment. limits: overrides of
    `kaggle_kit.service.limits.Limits`. Returns a handle with `.url` and `.stop()`
    unless `block=True`.
    """
    import uvicorn

    from kaggle_kit.service.app import create_app

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    app = create_app(engine_provider, api_key, served_model_name, strict, max_active, max_queued,
                     subchat_store=subchat_store, subchat_client=subchat_client, limits=limits, slots=slots,
                     interactive_share=interactive_share)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if block:
        server.run()
        return None
    errors: list[BaseException] = []

    def run():
        try:
            server.run()
        except BaseException as e:  # uvicorn exits with SystemExit when the port is taken
            errors.append(e)

    thread = threading.Thread(target=run, name=f"kk-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"could not start the server on {host}:{port} (is the port in use?) {errors or ''}")
    bound = server.servers[0].sockets[0].getsockname()[1] if port == 0 else port
    return ServerHandle(server, thread, host, bound)
