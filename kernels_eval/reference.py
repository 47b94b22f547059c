"""The reference's side, in a process of its own where candidate code never runs (trusted).

The reference model built after manual_seed(seed), its state_dict, and its outputs for `trials` seeded
inputs, written to a trusted folder the sandbox hides from candidates; whether the outputs depend on the
inputs at all (a degenerate problem); and, when asked, its timing, taken as a candidate's is
(kernels_eval.timing). Cached by the parent per problem and settings: every candidate of a problem is
judged against the same files and compared with the same time.
Nothing a candidate does to torch (Python attributes, dispatcher registrations, backend flags, RNG,
threads) can reach these numbers: the candidate's process is another process.
"""
from __future__ import annotations

import json
import os

from kernels_eval.child import Channel, host_peak, make_inputs, problem_module, take_lock, trial_seed, TIMING_SEED_OFFSET
from kernels_eval.errors import HarnessFailure, HarnessPhase
from kernels_eval.spec import ReferenceOutputs, ReferenceSpec


def _setup(spec: ReferenceSpec):
    import torch

    if spec.device == "cpu":
        torch.set_num_threads(int(spec.cpu_threads or 1))
    elif not torch.cuda.is_available():
        raise HarnessFailure("device=cuda but no CUDA device is visible")
    mod = problem_module(spec.problem_source, spec.device, spec.dir)
    torch.manual_seed(spec.seed)
    model = mod.Model(*mod.get_init_inputs()).to(spec.device).eval()
    return torch, mod, model


def outputs(spec: ReferenceSpec) -> ReferenceOutputs:
    from kernels_eval.compare import tensors, write_outputs

    with HarnessPhase("the reference"):
        torch, mod, model = _setup(spec)
        take_lock(spec.lock_fd)
        state = model.state_dict()
        if state:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(spec.dir, "state_dict.pt"))
        first, same, inputs_differ, peak = None, True, False, 0
        first_inputs = None
        for trial in range(spec.trials):
            before = host_peak()
            inputs = make_inputs(mod, trial_seed(spec.seed, trial), spec.device)
            with torch.no_grad():
                out = model(*inputs)
            peak = max(peak, host_peak() - before, sum(t.nbytes for t in tensors(out)))
            host = [t.detach().cpu() for t in tensors(out)]
            host_in = [t.detach().cpu() for t in tensors(inputs)]
            write_outputs(os.path.join(spec.dir, f"out-{trial}"), out)
            if first is None:
                first, first_inputs = host, host_in
            else:
                same = same and len(host) == len(first) and all(torch.equal(a, b) for a, b in zip(host, first))
                inputs_differ = inputs_differ or not all(torch.equal(a, b) for a, b in zip(host_in, first_inputs))
            del inputs, out
        del first, first_inputs
        timing = time_reference(spec, torch, mod, model) if spec.time else {}
    return ReferenceOutputs(dir=spec.dir, trials=spec.trials, has_state=bool(state),
                            degenerate=bool(spec.trials > 1 and same and inputs_differ), peak_bytes=peak,
                            timing=timing)


def time_reference(spec: ReferenceSpec, torch, mod, model) -> dict:
    """{"ms", "spread", "launch", ...} of the reference's forward, and "compiled_ms" when asked."""
    from kernels_eval.timing import clock_functions, time_both_ways

    clocks = clock_functions(spec.device)
    with HarnessPhase("timing the reference"):
        flush = _flush_bytes(torch, spec)
        inputs = make_inputs(mod, spec.seed + TIMING_SEED_OFFSET, spec.device)

        def run():
            with torch.no_grad():
                model(*inputs)

        timed = time_both_ways(run, spec.device, spec.warmup, spec.iters, spec.rounds, flush, clocks, spec.sleep_us)
        if spec.compare_compile:  # the stronger baseline: the reference through torch.compile
            compiled = torch.compile(model)

            def run_compiled():
                with torch.no_grad():
                    compiled(*inputs)

            timed["compiled_ms"] = time_both_ways(run_compiled, spec.device, spec.warmup, spec.iters, spec.rounds,
                                                  flush, clocks, spec.sleep_us)["ms"]
    return timed


def _flush_bytes(torch, spec) -> int:
    if spec.device != "cuda":
        return 0
    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)
    return spec.flush_bytes or max(2 * l2, 1 << 20)  # evict the whole L2, no more


def main() -> None:
    channel = Channel()
    spec = ReferenceSpec.from_json(channel.message["spec"])
    try:
        result = {"ok": outputs(spec).to_json()}
    except HarnessFailure as e:
        result = {"error": str(e)}
    except BaseException as e:  # noqa: BLE001 - the reference failed: the evaluator's problem, not a verdict
        result = {"error": f"the reference failed: {type(e).__name__}: {str(e)[-1500:]}"}
    with open(os.path.join(spec.dir, "reference.json"), "w") as f:
        json.dump(result, f)
    channel.finish(result)


if __name__ == "__main__":
    main()
