"""A scripted engine for unit-testing strategy logic (never the only proof: the same
strategies also run on the real vLLM engine in test_tts_vllm.py).

Tokens are characters (id = ord(c), EOS = 0). The script is a tree: `tree[prefix]`
lists the possible next steps after the generated text `prefix`, each as
(text, logprob of every token, ends_answer). Sample k of a request picks child
(k + call offset) mod len at every level, so n samples see different children.
"""
from __future__ import annotations

import threading

import numpy as np

from kaggle_kit.engine.types import LOW_CONFIDENCE, Completion, GenerationRequest, StepEvent, token_confidence

EOS = 0


WORDS = {"Yes": 0x110001, "No": 0x110002}  # whole-word tokens (beyond Unicode), as a real vocabulary has them


class CharTokenizer:
    chat_template = "scripted"
    eos_token_id = EOS

    def encode(self, text, add_special_tokens=False):
        return [WORDS[text]] if text in WORDS else [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        names = {v: k for k, v in WORDS.items()}
        return "".join(names.get(i) or chr(i) for i in ids if not (skip_special_tokens and i == EOS))

    def batch_decode(self, seqs, skip_special_tokens=True):
        return [self.decode(s, skip_special_tokens) for s in seqs]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, enable_thinking=False):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


class ScriptedEngine:
    """`generate` answers a batch at once; `add` / `step` / `abort` emit one token per request
    per step, like an engine driven step by step (the service's worker)."""

    def __init__(self, tree: dict[str, list[tuple[str, float, bool]]], max_model_len: int = 10_000,
                 kv_cache_tokens: int | None = None, step_delay: float = 0.0, judge=None):
        """judge(answer so far) -> P(yes): how the scripted model answers the critic's question."""
        self.tree = tree
        self.judge = judge
        self.judged: list[str] = []  # the answers the critic asked about, in order
        self.tokenizer = CharTokenizer()
        self.max_model_len = max_model_len
        self.kv_cache_tokens = kv_cache_tokens
        self.eos_token_ids = frozenset({EOS})
        self.calls: list[list] = []  # the requests of every generate() call
        self.lock = threading.RLock()
        self.running: dict[str, list] = {}  # request id -> [completion, tokens emitted, streamed]
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.in_flight_per_step: list[int] = []  # how many requests each step() ran
        self.step_delay = step_delay  # seconds per step: time for other requests to arrive meanwhile

    def add(self, request_id, prompt_ids, sampling, stream=False):
        if sampling.n != 1:
            raise ValueError("add() takes single-sample requests")
        if request_id in self.running:
            raise ValueError(f"request id {request_id} is already running")
        c = self.generate([GenerationRequest(prompt_ids, sampling)])[0][0]
        self.calls.pop()  # step-driven requests are not generate() calls
        self.running[request_id] = [c, 0, stream]
        self.added.append(request_id)

    def step(self):
        if self.step_delay:
            import time

            time.sleep(self.step_delay)
        self.in_flight_per_step.append(len(self.running))
        events = []
        for rid, state in list(self.running.items()):
            c, emitted, stream = state
            state[1] = emitted = emitted + 1
            done = emitted >= max(1, c.num_tokens)
            new = c.token_ids[emitted - 1: emitted]
            if stream or done:
                events.append(StepEvent(rid, done, self.tokenizer.decode(new) if stream else c.text,
                                        tuple(new) if stream else c.token_ids,
                                        c.finish_reason if done else None, None if stream or not done else c))
            if done:
                del self.running[rid]
        return events

    def abort(self, request_ids):
        for rid in request_ids:
            if self.running.pop(rid, None) is not None:
                self.aborted.append(rid)

    def has_unfinished(self):
        return bool(self.running)

    def _prompt_len(self, ids):
        text = self.tokenizer.decode(ids)
        return len(text) - len(text.split("[assistant]", 1)[1])

    def generate(self, requests, use_tqdm=False):
        self.calls.append(list(requests))
        out = []
        for r in requests:
            if self._judging(r):
                out.append([self._verdict(r)])
                continue
            start = self._prompt_len(r.prompt_ids)
            prefix = self.tokenizer.decode(r.prompt_ids[start:])
            offset = (r.sampling.seed or 0) % 7
            out.append([self._sample(prefix, k + offset, r.sampling, len(r.prompt_ids)) for k in range(r.sampling.n)])
        return out

    def _judging(self, r) -> bool:
        from kaggle_kit.tts.critic import QUESTION

        return QUESTION in self.tokenizer.decode(r.prompt_ids)

    def _verdict(self, r) -> Completion:
        """The critic's one token: Yes, with P(yes) = judge(the answer being judged)."""
        from kaggle_kit.tts.critic import QUESTION

        text = self.tokenizer.decode(r.prompt_ids)
        answer = text.split("[assistant]", 1)[1].split("[user]" + QUESTION, 1)[0]
        self.judged.append(answer)
        p = min(max(float(self.judge(answer)), 1e-6), 1 - 1e-6)
        lps = np.log([[p, 1 - p]])
        return Completion(token_ids=(WORDS["Yes"],), text="Yes", finish_reason="length",
                          chosen_logprobs=lps[:, 0], returned_ids=np.array([[WORDS["Yes"], WORDS["No"]]]),
                          returned_logprobs=lps, prompt_tokens=len(r.prompt_ids))

    def _sample(self, prefix, k, spec, prompt_len):
        ids, lps, stop_reason, finish = [], [], None, "length"
        while len(ids) < spec.max_tokens:
            children = self.tree.get(prefix)
            if not children:
                raise AssertionError(f"script has no continuation after {prefix!r}")
            text, lp, ends = children[k % len(children)]
            for ch in text:
                ids.append(ord(ch))
                lps.append(lp)
                if len(ids) >= spec.max_tokens:
                    break
            prefix += text
            if len(ids) >= spec.max_tokens and not (ends and len(text) == 0):
                break
            hit = next((s for s in spec.stop if prefix.endswith(s) and len(ids) > spec.min_tokens), None)
            if ends:
                ids.append(EOS)
                lps.append(lp)
                finish = "stop"
                break
            if hit:
                stop_reason, finish = hit, "stop"
                break
        chosen = np.asarray(lps, dtype=float)
        other = np.log1p(-np.exp(np.minimum(chosen, -1e-12)))  # the rest of the mass on one token
        returned = np.stack([chosen, other], axis=1) if len(ids) else np.zeros((0, 2))
        rule = spec.confidence_stop
        cut = rule.stop_at(token_confidence(returned, spec.logprobs)) if rule is not None else None
        if cut is not None:  # what a watching engine does: the sequence ends where the rule fires
            ids, chosen, returned, stop_reason, finish = ids[:cut], chosen[:cut], returned[:cut], None, LOW_CONFIDENCE
        return Completion(
            token_ids=tuple(ids), text=self.tokenizer.decode(ids), finish_reason=finish, stop_reason=stop_reason,
            chosen_logprobs=chosen, returned_ids=np.zeros((len(ids), 2), dtype=np.int64), returned_logprobs=returned,
            prompt_tokens=prompt_len, num_cached_tokens=0,
        )


def lp_for_score(score: float) -> float:
    """The per-token logprob whose perplexity step score is `score` (score = 1/(1 - lp))."""
    return 1.0 - 1.0 / score


class FeedbackEngine:
    """Answers that improve with feedback: the answer depends on which evaluator feedback the
    prompt carries (a refinement test's model). `answers` maps a marker found in the prompt to
    the answer text; the first matching marker wins, "" matches every prompt."""

    def __init__(self, answers: list[tuple[str, str]], delay: float = 0.0, max_model_len: int = 100_000):
        self.answers = answers
        self.delay = delay
        self.tokenizer = CharTokenizer()
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset({EOS})
        self.kv_cache_tokens = None
        self.lock = threading.RLock()
        self.prompts: list[str] = []

    def generate(self, requests, use_tqdm=False):
        if self.delay:
            import time

            time.sleep(self.delay)
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_ids)
            self.prompts.append(prompt)
            text = next(a for marker, a in self.answers if marker in prompt)
            ids = [ord(c) for c in text] + [EOS]
            lp = np.full(len(ids), -0.1)
            out.append([Completion(token_ids=tuple(ids), text=text, finish_reason="stop", chosen_logprobs=lp,
                                   returned_ids=np.zeros((len(ids), 1), dtype=np.int64),
                                   returned_logprobs=lp[:, None], prompt_tokens=len(r.prompt_ids))
                        for _ in range(r.sampling.n)])
        return out
