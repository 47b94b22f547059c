"""The verdict, in the parent (trusted): candidate code never runs here, and nothing here imports it.

Reads what the sandboxed candidate wrote (raw bytes and a JSON header: nothing is unpickled; links, files
of another owner and oversized files are refused), compares every trial with the reference's outputs
(kernels_eval.reference), the same-seed model first and the reference's copied weights only when that
fails (so weights folded in __init__ pass), and summarises the first output (its signature, for consensus).
The reference's timing is made once per problem with its outputs (kernels_eval.reference).
"""
from __future__ import annotations

import math
import os

from kernels_eval.compare import compare, read_outputs, signature
from kernels_eval.errors import HarnessFailure, HarnessPhase
from kernels_eval.spec import JudgeSpec, Judgement


def judge(spec: JudgeSpec) -> Judgement:
    failures = []
    sig = None
    for variant in spec.variants:
        worst, verdict = 0.0, None
        for trial in range(spec.trials):
            with HarnessPhase(f"trial {trial}: reading the reference's output"):
                ref, why = read_outputs(os.path.join(spec.reference_dir, f"out-{trial}"), None, 1 << 62)
                if ref is None:
                    raise HarnessFailure(f"the reference's output for trial {trial}: {why}")
            new, why = read_outputs(os.path.join(spec.outputs_dir, f"{variant}-{trial}"), spec.owner, spec.max_bytes)
            if new is None:
                verdict = Judgement(False, f"trial {trial}: {why}", trials=trial + 1, weights=variant)
                break
            if sig is None and trial == 0:
                try:
                    with HarnessPhase("the output's signature"):
                        sig = signature(new)
                except HarnessFailure:
                    raise
                except Exception:  # noqa: BLE001 - an output we cannot summarise joins no group
                    sig = None
            ok, why, diff = compare(ref, new, spec.tolerances)
            worst = max(worst, diff) if not math.isnan(diff) else worst
            if not ok:
                verdict = Judgement(False, f"trial {trial}: {why}", trials=trial + 1,
                                    max_abs_diff=None if math.isnan(diff) else diff, weights=variant)
                break
        if verdict is None:
            return Judgement(True, trials=spec.trials, max_abs_diff=worst, weights=variant, output_signature=sig)
        failures.append(verdict)
    if not failures:
        return Judgement(False, "the candidate wrote no outputs")
    last = failures[-1]  # the copied weights' verdict when tried: the closer comparison
    last.output_signature = sig
    if len(failures) > 1:
        last.message += f" (with its own same-seed weights: {failures[0].message})"
    return last
