"""Planted faults: the bundled reference solutions and faulty variants of them, for the tiny model's fit.

The tiny model is fitted on each bundled solution as the answer to its own problem's prompt,
mixed with variants that carry planted faults (a compile error, a wrong result, a crash, a
slow kernel). Every fault point is one local edit of the reference, taken independently with
probability `FAULT_RATE` across the fitted answers, so the model learns the mixture: it is
near-certain everywhere except at the fault points, where it hesitates between the right and
the wrong text. That is what sampling, step-level search and uncertainty scores act on.

A refinement conversation (the problem, a faulty answer, the feedback `kernels_eval.feedback`
writes for it) is answered with the reference (or, at `REFINE_FAULT_RATE`, with one fault
left), so a refinement round fixes more kernels than a fresh sample gets right.

Everything here is written for this project; its numbers test the toolkit, not a model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from kernels_eval.problems import Problem, load_problems
from kernels_eval.prompts import build_messages, build_refinement_messages
from kernels_eval.result import KernelEvalResult, Status

SOLUTIONS = Path(__file__).resolve().parents[2] / "kernels_eval" / "solutions"

# Share of the fitted first answers that carry each fault point (exactly: round(rate x count)).
# At the default sampling temperature (0.6) a learnt 0.4 becomes about 0.34 (p^(1/T) renormalised);
# measured on the built model, 10 samples per (problem, device): 10-60% of first samples are the
# reference, none off the planted text (benchmarks/selection_quality.py has the full mixture).
FAULT_RATE = 0.4
REFINE_FAULT_RATE = 0.1  # share of the refinement answers that keep one fault
FIRST_ANSWERS = 10  # fitted first answers per (problem, device)
REFINEMENTS = 6  # fitted refinement conversations per (problem, device)


@dataclass(frozen=True)
class Fault:
    """One local edit of a reference solution and the verdict it should earn."""
    kind: str  # compile_error | incorrect | crashed | slow (correct, but far slower than the reference)
    find: str  # occurs exactly once in the reference
    replace: str
    message: str  # what the evaluator would say (the fitted refinement conversations' feedback)


# solution file -> its problem, device and fault points
PLANTED: dict[str, tuple[str, str, tuple[Fault, ...]]] = {
    "relu_cpp.py": ("01_relu", "cpu", (
        Fault("compile_error", "auto y = torch::empty_like(x);", "auto y = torch::empty_like(input);",
              "main.cpp:7:32: error: 'input' was not declared in this scope"),
        Fault("incorrect", "in[i] > 0.f ? in[i] : 0.f", "in[i] < 0.f ? in[i] : 0.f",
              "output mismatch on trial 0: max abs diff 4.41"),
        Fault("slow", "        for (int64_t i = begin; i < end; ++i) out[i]",
              "        for (int rep = 0; rep < 256; ++rep) for (int64_t i = begin; i < end; ++i) out[i]",
              "correct, 0.004x the reference"),
    )),
    "vector_add_cpp.py": ("03_vector_add", "cpu", (
        Fault("compile_error", "float* py = y.data_ptr<float>();", "float* py = y.data_ptr<float>()",
              "main.cpp:9:35: error: expected ',' or ';' before 'at'"),
        Fault("incorrect", "py[i] = pa[i] + pb[i];", "py[i] = pa[i] + pb[i + 1];",
              "output mismatch on trial 0: max abs diff 5.02"),
        Fault("crashed", "auto y = torch::empty_like(a);", "auto y = torch::empty({0}, a.options());",
              "killed by signal 11 (SIGSEGV)"),
    )),
    "row_sum_cpp.py": ("04_row_sum", "cpu", (
        Fault("compile_error", "float* out = y.data_ptr<float>();", "float* out = y.data_ptr<double>();",
              "main.cpp:9:36: error: cannot convert 'double*' to 'float*' in initialization"),
        Fault("incorrect", "for (int64_t c = 0; c < cols; ++c)", "for (int64_t c = 1; c < cols; ++c)",
              "output mismatch on trial 0: max abs diff 3.12"),
        Fault("crashed", "const int64_t rows = x.size(0), cols = x.size(1);",
              "const int64_t rows = x.size(0) << 20, cols = x.size(1);", "killed by signal 11 (SIGSEGV)"),
    )),
    "relu_cuda.py": ("01_relu", "cuda", (
        Fault("compile_error", "(x.data_ptr<float>(), y.data_ptr<float>(), n);", "(x.data_ptr<float>(), y.data_ptr<float>());",
              "cuda.cu(21): error: too few arguments in function call"),
        Fault("incorrect", "y[i] = v > 0.f ? v : 0.f;", "y[i] = v > 0.f ? v : -v;",
              "output mismatch on trial 0: max abs diff 4.41"),
        Fault("crashed", "i < n; i += (int64_t)blockDim.x * gridDim.x", "i < n * 1024; i += (int64_t)blockDim.x * gridDim.x",
              "CUDA error: an illegal memory access was encountered"),
        Fault("slow", "(n + threads - 1) / threads, 65535)", "(n + threads - 1) / threads, 2)",
              "correct, 0.05x the reference"),
    )),
    "vector_add_cuda.py": ("03_vector_add", "cuda", (
        Fault("compile_error", "float4 x = a[i], z = b[i];", "float4 x = a[i], z = b[i]",
              "cuda.cu(7): error: expected a \";\""),
        Fault("incorrect", "x.y + z.y", "x.y + z.x", "output mismatch on trial 0: max abs diff 4.87"),
        Fault("slow", "(n4 + threads - 1) / threads, 65535)", "(n4 + threads - 1) / threads, 2)",
              "correct, 0.06x the reference"),
    )),
    "softmax_cuda.py": ("05_softmax", "cuda", (
        Fault("compile_error", "v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));", "v = fmaxf(v, __shfl_xor_sync(v, o));",
              "cuda.cu(6): error: no instance of overloaded function \"__shfl_xor_sync\" matches the argument list"),
        Fault("incorrect", "    m = block_reduce<true>(m, shared);\n", "",
              "output mismatch on trial 0: max abs diff 0.0312"),
        Fault("incorrect", "__expf(xr[i] - m) * inv;", "__expf(xr[i] + m) * inv;",
              "output mismatch on trial 0: max abs diff 0.998"),
        Fault("slow", "softmax_kernel<<<(int)x.size(0), 256>>>", "softmax_kernel<<<(int)x.size(0), 32>>>",
              "correct, 0.4x the reference"),
    )),
}


def reference_answer(solution: str) -> str:
    """A solution file as the model answers: one python code block (its docstring left out)."""
    text = (SOLUTIONS / solution).read_text()
    if text.startswith('"""'):
        text = text[text.index('"""', 3) + 3:].lstrip("\n")
    return f"```python\n{text.rstrip()}\n```"


def apply(answer: str, faults: tuple[Fault, ...] | list[Fault]) -> str:
    for f in faults:
        if answer.count(f.find) != 1:
            raise ValueError(f"fault {f.kind!r}: {f.find!r} occurs {answer.count(f.find)} times in the answer, not once")
        answer = answer.replace(f.find, f.replace)
    return answer


def variants(solution: str) -> dict[str, str]:
    """The reference answer and each single-fault variant, by name ('reference', 'compile_error', ...)."""
    ref = reference_answer(solution)
    out = {"reference": ref}
    for i, f in enumerate(PLANTED[solution][2]):
        out[f.kind if f.kind not in out else f"{f.kind}_{i}"] = apply(ref, [f])
    return out


def _fault_sets(rng: random.Random, faults: tuple[Fault, ...], count: int, rate: float) -> list[list[Fault]]:
    """`count` answers in which each fault is planted in exactly round(rate * count) of them, at random."""
    chosen: list[list[Fault]] = [[] for _ in range(count)]
    for f in faults:
        for i in rng.sample(range(count), round(rate * count)):
            chosen[i].append(f)
    return chosen


def _feedback(problem: Problem, fault: Fault) -> str:
    from kernels_eval.feedback import feedback

    status = {"slow": Status.CORRECT, "compile_error": Status.COMPILE_ERROR, "incorrect": Status.INCORRECT,
              "crashed": Status.CRASHED}[fault.kind]
    result = KernelEvalResult(problem=problem.name, status=status, message=fault.message,
                              compiled=status is not Status.COMPILE_ERROR, correct=status is Status.CORRECT,
                              speedup=0.05 if status is Status.CORRECT else None,
                              runtime_ms=2.0 if status is Status.CORRECT else None,
                              ref_runtime_ms=0.1 if status is Status.CORRECT else None,
                              max_abs_diff=4.41 if status is Status.INCORRECT else None)
    return feedback(result, None, 1.0) or ""


def conversations(rng: random.Random, thinking_rate: float = 0.0) -> list[list[dict]]:
    """The fitted kernel conversations: first answers with planted faults, and refinements."""
    problems = {p.name: p for p in load_problems()}
    convs = []
    for solution, (name, device, faults) in PLANTED.items():
        problem, ref = problems[name], reference_answer(solution)
        for fs in _fault_sets(rng, faults, FIRST_ANSWERS, FAULT_RATE):
            convs.append(build_messages(problem, device, thinking=rng.random() < thinking_rate)
                         + [{"role": "assistant", "content": apply(ref, fs)}])
        keep = set(rng.sample(range(REFINEMENTS), round(REFINE_FAULT_RATE * REFINEMENTS)))
        for i in range(REFINEMENTS):
            wrong = faults[i % len(faults)]
            messages = build_refinement_messages(problem, device, apply(ref, [wrong]), _feedback(problem, wrong),
                                                 thinking=rng.random() < thinking_rate)
            kept = [rng.choice([f for f in faults if f is not wrong] or [wrong])] if i in keep else []
            convs.append(messages + [{"role": "assistant", "content": apply(ref, kept)}])
    return convs


def solution_for(problem: str, device: str) -> str | None:
    """The planted solution file of (problem name, device), if any."""
    return next((s for s, (name, dev, _) in PLANTED.items() if name == problem and dev == device), None)


def classify(solution: str, answer: str) -> str:
    """Which planted answer `answer` is: 'reference', the kinds of its faults joined by '+'
    ('compile_error+slow'), or 'other' (text the fit never wrote: the model went astray)."""
    import itertools

    ref, faults = reference_answer(solution), PLANTED[solution][2]
    text = answer.strip()
    for r in range(len(faults) + 1):
        for fs in itertools.combinations(faults, r):
            if apply(ref, list(fs)) == text:
                return "+".join(f.kind for f in fs) or "reference"
    return "other"


def expected_status(label: str) -> str | None:
    """The evaluator status a planted label should earn (the first fault that bites wins:
    a build error before anything runs, a crash before a comparison); None for 'other'."""
    if label == "other":
        return None
    kinds = set(label.split("+"))
    for kind in ("compile_error", "crashed", "incorrect"):
        if kind in kinds:
            return kind
    return "correct"  # the reference, or slow
