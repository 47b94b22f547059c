"""How a run picks its kernel among a strategy's finished candidates: one table, every list derived from it.

    uncertainty          the strategy's own pick: the best aggregated score
    execution            run every candidate against the reference; passes cleanly > passes but flagged >
                         compiles > the score (the oracle-like verifier: it knows the right answer)
    consensus            self-consistency by execution (MBR-exec / CodeT): run every candidate on the same
                         inputs, group those whose outputs agree (kernels_eval.consensus), pick from the
                         largest group; the reference's output is never consulted
    consensus_weighted   the same, each group weighed by the sum of its members' scores
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kernels_eval import consensus
from kernels_eval.records import GeneratedRecord
from kernels_eval.result import KernelEvalResult


def score_key(x) -> float:
    """A candidate's uncertainty score for ranking: a missing or NaN score ranks last."""
    return x if isinstance(x, (int, float)) and x == x else float("-inf")


Checked = dict[int, tuple[str, KernelEvalResult]]  # candidate -> (parse status, its evaluation)


@dataclass(frozen=True)
class Verifier:
    runs_all: bool  # every candidate is evaluated before the choice
    uses_scorer: bool  # the scorer's scores weigh in (a grid runs it once per scorer)
    choose: Callable[[GeneratedRecord, Checked], tuple[int, dict]]  # -> (chosen candidate, what the record keeps)

    def label(self, name: str, strategy: str, scorer: str) -> str:
        """How figures and tables name the method: 'beam_search/entropy', 'offline_bon/execution',
        'offline_bon/perplexity+consensus'."""
        if name == "uncertainty":
            return f"{strategy}/{scorer}"
        return f"{strategy}/{scorer}+{name}" if self.uses_scorer else f"{strategy}/{name}"


def _by_score(gen: GeneratedRecord, checked: Checked) -> tuple[int, dict]:
    return gen.chosen, {}


def _by_execution(gen: GeneratedRecord, checked: Checked) -> tuple[int, dict]:
    def rank(i: int):  # passes cleanly > passes but flagged > compiles > the uncertainty score (ties: earliest)
        r = checked[i][1]
        return r.counts_as_correct, r.correct, r.compiled, score_key(gen.candidates[i].score), -i
    return max(checked, key=rank), {}


def _by_consensus(weighted: bool):
    def choose(gen: GeneratedRecord, checked: Checked) -> tuple[int, dict]:
        v = consensus.vote({i: r for i, (_, r) in checked.items()}, [c.score for c in gen.candidates], weighted)
        chosen = gen.chosen if v.chosen is None else v.chosen  # nothing ran: the score's pick
        return chosen, {"groups": v.groups, "group_weights": v.weights}
    return choose


VERIFIERS: dict[str, Verifier] = {
    "uncertainty": Verifier(runs_all=False, uses_scorer=True, choose=_by_score),
    "execution": Verifier(runs_all=True, uses_scorer=False, choose=_by_execution),
    "consensus": Verifier(runs_all=True, uses_scorer=True, choose=_by_consensus(weighted=False)),
    "consensus_weighted": Verifier(runs_all=True, uses_scorer=True, choose=_by_consensus(weighted=True)),
}
NAMES = tuple(VERIFIERS)


def method_label(strategy: str, scorer: str, verifier: str = "uncertainty") -> str:
    return VERIFIERS[verifier].label(verifier, strategy, scorer)
