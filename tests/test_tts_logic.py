"""Strategy, scorer and aggregation logic on a scripted engine with known logprobs."""
import itertools
import math

import numpy as np
import pytest

from kaggle_kit.tts import scorers
from kaggle_kit.tts.aggregation import aggregate
from kaggle_kit.tts.api import run_strategy
from kaggle_kit.tts.params import TTSParams
from kaggle_kit.tts.results import CompletionReason, to_frame
from kaggle_kit.tts.steps import exact_step_texts, split_points
from scripted_engine import ScriptedEngine, lp_for_score

MSGS = [{"role": "user", "content": "q"}]
BASE = dict(scorer="perplexity", min_step_tokens=0, temperature=1.0, logprobs=2, seed=0)

# DESIGN.md's worked example (lm-polygraph 0.7.0 numbers).
POS = [{0: -0.222815513588011, 1: -2.222815513588011},
       {3: -1.8248949295762429, 1: -1.424894929576243, 0: -1.624894929576243},
       {2: -1.0762578809043903, 1: -0.5762578809043903},
       {7: -0.08637469551650057, 0: -3.0863746955165006}]
CHOSEN = [POS[t][c] for t, c in enumerate([0, 3, 2, 7])]


def test_scorers_match_lm_polygraph():
    assert abs(scorers.uncertainty("entropy", CHOSEN, POS) - 0.5717268771766745) < 1e-9
    assert abs(scorers.uncertainty("perplexity", CHOSEN, POS) - 0.8025857548962863) < 1e-9
    assert abs(scorers.uncertainty("sequence_prob", CHOSEN, POS) - 3.210343019585145) < 1e-9
    assert abs(scorers.uncertainty("perplexity", CHOSEN[1:3], POS[1:3]) - 1.4505764052403167) < 1e-9
    assert abs(scorers.uncertainty("sequence_prob", CHOSEN[1:3], POS[1:3]) - 2.9011528104806334) < 1e-9
    arr = scorers.as_returned(POS)
    assert arr.shape == (4, 3) and np.isnan(arr[0, 2])
    assert scorers.uncertainty("entropy", CHOSEN, arr) == scorers.uncertainty("entropy", CHOSEN, POS)


def test_confidence_is_deepconf_lowest_group_mean():
    ret = scorers.as_returned(POS)
    # top-2 per position (row 1 has 3 entries: the sampled token is outside the top-2)
    conf = [-(a + b) / 2 for a, b in [(-0.2228, -2.2228), (-1.4249, -1.6249), (-0.5763, -1.0763), (-0.0864, -3.0864)]]
    expect = min(np.convolve(conf, np.ones(2) / 2, mode="valid"))
    assert abs(scorers.lowest_group_confidence(ret, window=2) - expect) < 1e-3
    assert scorers.uncertainty("confidence", CHOSEN, POS) > 0


def test_scorers_rank_differently_where_they_should():
    # A: confident chosen tokens but a flat top-k; B: a less likely chosen token, peaked top-k.
    a_chosen, a_ret = [-0.5, -0.5], [[-0.5, -1.0, -1.2], [-0.5, -1.0, -1.2]]
    b_chosen, b_ret = [-0.7, -0.7], [[-0.7, -5.0, -6.0], [-0.7, -5.0, -6.0]]
    ent = [scorers.uncertainty("entropy", c, r) for c, r in [(a_chosen, a_ret), (b_chosen, b_ret)]]
    ppl = [scorers.uncertainty("perplexity", c, r) for c, r in [(a_chosen, a_ret), (b_chosen, b_ret)]]
    assert ent[0] > ent[1] and ppl[0] < ppl[1]  # entropy prefers B, perplexity prefers A
    # Same mean NLL, different length: perplexity ties, sequence_prob prefers the shorter.
    short, long = [-0.3] * 2, [-0.3] * 6
    assert scorers.uncertainty("perplexity", short, [[x] for x in short]) == pytest.approx(
        scorers.uncertainty("perplexity", long, [[x] for x in long]))
    assert scorers.uncertainty("sequence_prob", short, [[x] for x in short]) < scorers.uncertainty(
        "sequence_prob", long, [[x] for x in long])
    assert scorers.step_score(0.0) == 1.0 and scorers.step_score(1.0) == 0.5


def test_scorer_errors():
    with pytest.raises(ValueError, match="unknown scorer 'ppl'; choose from entropy, perplexity"):
        scorers.uncertainty("ppl", [-1.0], [[-1.0]])
    with pytest.raises(ValueError, match="needs top-k logprobs"):
        scorers.uncertainty("entropy", [-1.0], np.zeros((1, 0)))
    assert math.isnan(scorers.uncertainty("perplexity", [], []))


@pytest.mark.parametrize("method, window, expect", [
    ("min", None, 0.2), ("max", None, 0.9), ("mean", None, (0.9 + 0.2 + 0.5) / 3),
    ("product", None, 0.9 * 0.2 * 0.5), ("last", None, 0.5), ("min", 1, 0.5), ("mean", 2, 0.35),
])
def test_aggregation(method, window, expect):
    assert aggregate([0.9, None, 0.2, float("nan"), 0.5], method, window) == pytest.approx(expect)


def test_aggregation_errors():
    assert math.isnan(aggregate([None, float("inf")], "mean"))
    with pytest.raises(ValueError, match="choose from min, mean, max, product, last"):
        aggregate([1.0], "median")
    with pytest.raises(ValueError, match="window_size"):
        aggregate([1.0], "min", 0)


def test_split_points_mirror_vllm_min_tokens():
    pieces = list("ab\n\ncd\n\nefgh")
    assert split_points(pieces, ["\n\n"], 0, 100) == [4, 8, 12]
    assert split_points(pieces, ["\n\n"], 4, 100) == [8, 12]  # the first blank line comes too early
    # a new step sees only its own text (as vLLM sees only the new request's output)
    assert split_points(pieces, ["\n\n"], 0, 3) == [3, 6, 8, 11, 12]
    assert split_points(["x\n", "\ny"], ["\n\n"], 0, 10) == [2]  # a stop string across tokens ends at the token completing it


def test_exact_step_texts_join_to_the_whole(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("héllo wörld ✓ __global__ void k() {}\n\n", add_special_tokens=False)
    whole = tok.decode(ids)
    for cut in range(1, len(ids)):
        texts = exact_step_texts(tok, [ids[:cut], ids[cut:]])
        assert "".join(texts) == whole and "\ufffd" not in "".join(texts)


def test_params_are_checked():
    with pytest.raises(ValueError, match="unknown strategy 'bon'; choose from offline_bon, online_bon, beam_search"):
        TTSParams.of(strategy="bon")
    with pytest.raises(ValueError, match="unknown score_aggregation"):
        TTSParams.of(score_aggregation="avg")
    with pytest.raises(TypeError, match="unknown TTS parameter"):
        TTSParams.of(beam_width=3)
    with pytest.raises(ValueError, match="beam_size must be a positive integer"):
        TTSParams.of(beam_size=0)


# -- strategies on scripted trees -------------------------------------------------

def step(text, score, ends=False):
    return (text, lp_for_score(score), ends)


def test_online_bon_keeps_the_best_candidate_each_step():
    tree = {
        "": [step("a\n\n", 0.3), step("b\n\n", 0.8), step("c\n\n", 0.5)],
        "b\n\n": [step("x\n\n", 0.9), step("y", 0.4, ends=True), step("z\n\n", 0.6)],
        "b\n\nx\n\n": [step("end", 0.2, True), step("END", 0.7, True), step("fin", 0.1, True)],
    }
    eng = ScriptedEngine(tree)
    res = run_strategy(MSGS, engine=eng, strategy="online_bon", candidates_per_step=3, **BASE)
    assert res.text == "b\n\nx\n\nEND" and [s.text for s in res.steps] == ["b\n\n", "x\n\n", "END"]
    assert [round(s.score, 6) for s in res.steps] == [0.8, 0.9, 0.7]
    assert res.completion_reason is CompletionReason.EOS
    assert res.usage.engine_calls == 3 == len(eng.calls) and len(res.tree) == 9
    assert sum(s.selected for s in res.tree) == 3
    # the step after "b" was asked for with the prompt plus exactly b's token ids
    assert eng.calls[1][0].prompt_ids[-3:] == tuple(ord(c) for c in "b\n\n")


def _random_tree(depth, width, seed):
    rng = np.random.default_rng(seed)
    tree = {}
    for d in range(depth):
        for path in itertools.product(range(width), repeat=d):
            prefix = "".join(f"{c}{i}\n\n" for i, c in enumerate(path))
            tree[prefix] = [(f"{k}{d}" + ("" if d == depth - 1 else "\n\n"), lp_for_score(rng.uniform(0.05, 0.95)),
                             d == depth - 1) for k in range(width)]
    return tree


def _brute_force(tree, method):
    best = None
    def walk(prefix, scores):
        nonlocal best
        for text, lp, ends in tree[prefix]:
            s = scores + [1 / (1 - lp)]
            if ends:
                agg = aggregate(s, method)
                if best is None or agg > best[0] + 1e-12:
                    best = (agg, prefix + text)
            else:
                walk(prefix + text, s)
    walk("", [])
    return best


@pytest.mark.parametrize("method", ["min", "mean", "max", "product", "last"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_equals_brute_force_when_wide_enough(method, seed):
    tree = _random_tree(depth=3, width=3, seed=seed)
    res = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="beam_search", beam_size=27,
                       candidates_per_step=3, score_aggregation=method, **BASE)
    agg, text = _brute_force(tree, method)
    assert res.text == text and res.aggregated_score == pytest.approx(agg)


def test_beam_search_prunes_by_aggregate_and_keeps_finished_beams():
    # Greedy on the first step picks "a" (0.9), but every continuation of "a" is poor;
    # with beam_size 2, "b" survives and wins under min aggregation.
    tree = {
        "": [step("a\n\n", 0.9), step("b\n\n", 0.8), step("c\n\n", 0.1)],
        "a\n\n": [step("a1", 0.2, True), step("a2", 0.3, True), step("a3", 0.25, True)],
        "b\n\n": [step("b1", 0.7, True), step("b2", 0.5, True), step("b3", 0.55, True)],
        "c\n\n": [step("c1", 0.99, True)] * 3,
    }
    res = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="beam_search", beam_size=2,
                       candidates_per_step=3, score_aggregation="min", **BASE)
    assert res.text == "b\n\nb1" and res.aggregated_score == pytest.approx(0.7)
    assert res.usage.engine_calls == 2 and len(res.candidates) == 2  # two finished beams competed
    assert not any(s.text.startswith("c") and s.depth == 1 for s in res.tree)  # "c" was pruned


def test_offline_bon_picks_the_best_aggregate():
    tree = {"": [step("p\n\n", 0.9), step("q\n\n", 0.5), step("r\n\n", 0.7)],
            "p\n\n": [step("P", 0.1, True)] * 3, "q\n\n": [step("Q", 0.6, True)] * 3, "r\n\n": [step("R", 0.45, True)] * 3}
    eng = ScriptedEngine(tree)
    res = run_strategy(MSGS, engine=eng, strategy="offline_bon", num_trajectories=3, score_aggregation="min", **BASE)
    assert res.text == "q\n\nQ" and res.aggregated_score == pytest.approx(0.5)
    assert res.usage.engine_calls == 1 and eng.calls[0][0].sampling.n == 3 and "\n\n" not in eng.calls[0][0].sampling.stop
    assert sorted(round(c.aggregated_score, 6) for c in res.candidates) == [0.1, 0.45, 0.5]
    assert all(len(c.steps) == 2 for c in res.candidates)  # split afterwards at the blank line
    res_mean = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="offline_bon", num_trajectories=3,
                            score_aggregation="mean", **BASE)
    assert res_mean.text == "r\n\nR"  # (0.7+0.45)/2 beats (0.5+0.6)/2 and (0.9+0.1)/2


@pytest.mark.parametrize("strategy", ["online_bon", "beam_search"])
def test_max_steps_finishes_instead_of_truncating(strategy):
    tree = {("s\n\n" * d): [step("s\n\n", 0.5)] for d in range(6)}
    tree["s\n\n" * 6] = [step("done", 0.5, True)]
    eng = ScriptedEngine(tree)
    res = run_strategy(MSGS, engine=eng, strategy=strategy, max_steps=2, candidates_per_step=2, beam_size=2, **BASE)
    assert res.text == "s\n\n" * 6 + "done"  # finished, not cut at 2 steps
    assert res.completion_reason is CompletionReason.MAX_STEPS
    assert res.steps[-1].final_continuation and len(res.steps) == 3
    assert res.usage.engine_calls == 3  # 2 steps + 1 final continuation


def test_token_budget_and_batching():
    tree = {("s\n\n" * d): [step("s\n\n", 0.5)] for d in range(50)}
    eng = ScriptedEngine(tree)
    res = run_strategy(MSGS, engine=eng, strategy="online_bon", max_tokens=10, candidates_per_step=2, **BASE)
    assert res.completion_reason is CompletionReason.MAX_TOKENS and len(res.text) == 10
    from kaggle_kit.tts.api import run_strategy_batch

    eng = ScriptedEngine({**_random_tree(3, 2, 5)})
    results = run_strategy_batch([MSGS, [{"role": "user", "content": "other"}]], engine=eng, strategy="beam_search",
                                 beam_size=2, candidates_per_step=2, **BASE)
    assert len(results) == 2 and len(eng.calls) == 3  # one engine call per step for both prompts
    assert all(len(call) == len({r.prompt_ids for r in call}) for call in eng.calls)
    frame = to_frame(results)
    assert list(frame["strategy"]) == ["beam_search"] * 2 and "usage_engine_calls" in frame


def test_a_request_fans_out_into_seeded_single_samples():
    from kaggle_kit.engine.types import GenerationRequest, SamplingSpec

    specs = GenerationRequest((1, 2), SamplingSpec(n=3, seed=7, temperature=0.5)).samples()
    assert [(s.n, s.seed, s.temperature) for s in specs] == [(1, 7, 0.5), (1, 8, 0.5), (1, 9, 0.5)]
    assert [s.seed for s in GenerationRequest((1,), SamplingSpec(n=2)).samples()] == [None, None]


def test_dvts_keeps_one_path_per_subtree_where_beam_search_crowds():
    # A strong first step (A) fills both of beam search's beams with its children; DVTS's two
    # subtrees each keep their own best (A in one, B in the other), so its finalists stay diverse.
    tree = {"": [step("A\n\n", 0.9), step("B\n\n", 0.6), step("C\n\n", 0.5)],
            "A\n\n": [step("x", 0.9, True), step("y", 0.85, True)],
            "B\n\n": [step("u", 0.7, True), step("v", 0.65, True)],
            "C\n\n": [step("w", 0.4, True), step("z", 0.3, True)]}
    opts = dict(beam_size=2, candidates_per_step=2, score_aggregation="min", **BASE)
    beam = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="beam_search", **opts)
    eng = ScriptedEngine(tree)
    dvts = run_strategy(MSGS, engine=eng, strategy="dvts", **opts)
    first = lambda res: sorted(c.steps[0].text for c in res.candidates)  # noqa: E731
    assert first(beam) == ["A\n\n", "A\n\n"] and first(dvts) == ["A\n\n", "B\n\n"]
    assert beam.text == dvts.text == "A\n\nx"
    assert len(eng.calls) == 2 and all(len(call) == 2 and all(r.sampling.n == 2 for r in call) for call in eng.calls)


def test_adaptive_bon_stops_sampling_once_an_answer_is_good_enough():
    # Waves of 2 whole answers: the first wave (seed offset 0) draws the two weak ones, the second
    # (offset 1) reaches the strong one and stops; offline best-of-8 pays for all eight.
    tree = {"": [step("weak", 0.5, True), step("fair", 0.6, True), step("strong", 0.97, True)]}
    opts = dict(num_trajectories=8, candidates_per_step=2, **BASE)
    eng = ScriptedEngine(tree)
    adaptive = run_strategy(MSGS, engine=eng, strategy="adaptive_bon", stop_score=0.95, **opts)
    offline = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="offline_bon", **opts)
    assert adaptive.text == offline.text == "strong"
    assert len(adaptive.candidates) == 4 and len(offline.candidates) == 8
    assert [r.sampling.n for call in eng.calls for r in call] == [2, 2]
    assert adaptive.usage.generated_tokens < offline.usage.generated_tokens
    never = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="adaptive_bon", stop_score=1.0, **opts)
    assert len(never.candidates) == 8 and never.text == "strong"  # the whole budget when nothing is sure
    with pytest.raises(ValueError, match="stop_score must be in"):
        TTSParams(stop_score=1.5)


def test_deepconf_stops_a_trace_once_it_falls_under_the_warmup_bar():
    # Token confidence is the top-k's peakedness: a 0.95 token is confident (C 1.5), a 0.6 one is a coin
    # toss (C 0.69). Warm-up (samples 0 and 1): "good" and "flat" set the bar at the 10th percentile of
    # their lowest 16-token group confidence, 0.77. Samples 2-4 run under a ConfidenceStop: "okay" (C 1.0)
    # and "good" finish, "flat" is aborted by the engine after its first 16 tokens.
    tail = lambda sc: [step("e" * 20, sc, True)]  # noqa: E731
    tree = {"": [step("good" * 5 + "\n\n", 0.95), step("flat" * 5 + "\n\n", 0.6), step("okay" * 5 + "\n\n", 0.85)],
            "good" * 5 + "\n\n": tail(0.95), "flat" * 5 + "\n\n": tail(0.6), "okay" * 5 + "\n\n": tail(0.85)}
    opts = dict(BASE, num_trajectories=5, score_aggregation="min")
    eng = ScriptedEngine(tree)
    res = run_strategy(MSGS, engine=eng, strategy="deepconf", warmup_traces=2, **opts)
    offline = run_strategy(MSGS, engine=ScriptedEngine(tree), strategy="offline_bon", **opts)
    assert [r.sampling.n for call in eng.calls for r in call] == [2, 3]
    rule = eng.calls[1][0].sampling.confidence_stop
    assert rule.window == 16 and rule.bar == pytest.approx(0.69 + 0.1 * (1.5 - 0.69), abs=0.02)
    assert sorted(c.text[:4] for c in res.candidates) == ["flat", "good", "good", "okay"]  # the warm-up's stay
    stopped = [st for st in res.tree if st.finish == "low_confidence"]
    assert len(stopped) == 1 and stopped[0].num_tokens == 16 and res.usage.early_stopped == 1
    # the same samples as offline best-of-5 but for the stopped one's tail: what early stopping saves
    assert sorted(c.text for c in res.candidates) == sorted(c.text for c in offline.candidates)[1:]  # one "flat" less
    assert offline.usage.generated_tokens - res.usage.generated_tokens == 22 + 20 + 1 - 16
    assert res.text == offline.text


def test_the_critic_scorer_asks_the_model_about_each_answer_and_its_verdict_is_the_score():
    # Every candidate has the same logprobs; only the model's yes/no verdict tells them apart.
    tree = {"": [step("bug\n\n", 0.5), step("ok\n\n", 0.5)],
            "bug\n\n": [step("a", 0.5, True), step("b", 0.5, True)], "ok\n\n": [step("a", 0.5, True), step("b", 0.5, True)]}
    judge = lambda answer: 0.1 if "bug" in answer else (0.9 if answer.endswith("b") else 0.8)  # noqa: E731
    eng = ScriptedEngine(tree, judge=judge)
    opts = dict(BASE, scorer="critic")
    online = run_strategy(MSGS, engine=eng, strategy="online_bon", candidates_per_step=2, **opts)
    assert online.text == "ok\n\nb" and [round(s.score, 6) for s in online.steps] == [0.8, 0.9]
    # each step is one call for the candidates and one for their verdicts (prefix: prompt + answer so far)
    assert online.usage.engine_calls == 4 and sorted(eng.judged) == ["bug\n\n", "ok\n\n", "ok\n\na", "ok\n\nb"]
    judge_call = eng.calls[1]
    assert all(r.sampling.max_tokens == 1 and r.sampling.temperature == 0 for r in judge_call)
    assert judge_call[1].prompt_ids[:len(eng.calls[0][0].prompt_ids)] == eng.calls[0][0].prompt_ids
    offline = run_strategy(MSGS, engine=ScriptedEngine(tree, judge=judge), strategy="offline_bon", num_trajectories=4,
                           **opts)
    assert offline.text == "ok\n\nb" and offline.aggregated_score == pytest.approx(0.9)
    # offline: one verdict per whole answer, on its last step; the other steps carry no score
    assert all(np.isnan(c.steps[0].score) and not np.isnan(c.steps[-1].score) for c in offline.candidates)
    from kaggle_kit.tts.critic import judged_uncertainty
    from kaggle_kit.engine.types import Completion
    from scripted_engine import WORDS, CharTokenizer

    neither = Completion((7,), "x", "length", returned_ids=np.array([[7, 8]]), returned_logprobs=np.log([[0.6, 0.4]]))
    assert np.isnan(judged_uncertainty(CharTokenizer(), neither))  # no yes or no among the top-k: no evidence
    only_no = Completion((WORDS["No"],), "No", "length", returned_ids=np.array([[WORDS["No"], 7]]),
                         returned_logprobs=np.log([[0.7, 0.3]]))
    assert judged_uncertainty(CharTokenizer(), only_no) == np.inf
    with pytest.raises(ValueError, match="judgement, asked by the search"):
        scorers.uncertainty("critic", [-0.1], [[-0.1]])
