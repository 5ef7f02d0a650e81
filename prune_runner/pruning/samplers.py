"""How prune.allocation=search draws the raw per-group ratios of a candidate (prune.search.sampler): the sampler
registry. Raw ratios are only directions: candidates.py scales them to the MACs target. A sampler is told every
scored candidate (`tell`), the ones a resumed search reads back from candidates.jsonl included: `random` then
draws what the killed search would have drawn (draw `index` has its own generator); `tpe` goes on from the
same scored trials (its own random state starts afresh).
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

from ..registry import Registry

LOWEST = 0.05  # the smallest raw ratio drawn: a group drawn near 0 would keep every channel at any scale


class Sampler:
    """Draws raw ratios in [LOWEST, 1] for `groups`, one candidate at a time."""

    def __init__(self, groups: List[str], seed: int):
        self.groups, self.seed = groups, seed

    def ask(self, index: int) -> Dict[str, float]:
        raise NotImplementedError

    def tell(self, raw: Dict[str, float], score: float) -> None:
        """What candidate `raw` scored (its proxy); samplers that learn from it override this."""

    def fail(self) -> None:
        """The last draw could not meet the target (candidates.py found no scale): it is not scored."""


SAMPLERS: Registry[Callable[[List[str], int], Sampler]] = Registry("prune.search.sampler")


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Independent uniform ratios per group, as EagleEye draws them; candidate `index` has a generator of its
    own, so a resumed search draws the same candidates."""

    def ask(self, index: int) -> Dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)  # a prime above any candidate count
        values = torch.rand(len(self.groups), generator=generator, dtype=torch.float64)
        return {g: LOWEST + (1 - LOWEST) * float(v) for g, v in zip(self.groups, values)}


@SAMPLERS.register("tpe")
class TpeSampler(Sampler):
    """Optuna's TPE over the same ratios: later candidates are drawn where the scored ones did well."""

    def __init__(self, groups: List[str], seed: int):
        super().__init__(groups, seed)
        import optuna  # here: only a search with this sampler needs it (about a second to import)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.space = {g: optuna.distributions.FloatDistribution(LOWEST, 1.0) for g in groups}
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def ask(self, index: int) -> Dict[str, float]:
        trial = self.study.ask(self.space)
        self._pending = trial
        return dict(trial.params)

    def tell(self, raw: Dict[str, float], score: float) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None and dict(pending.params) == raw:
            self.study.tell(pending, score)
        else:  # read back from candidates.jsonl, or never asked (the default allocations)
            self.study.add_trial(self.optuna.trial.create_trial(params=raw, distributions=self.space, value=score))
        self._pending = None

    def fail(self) -> None:
        if getattr(self, "_pending", None) is not None:
            self.study.tell(self._pending, state=self.optuna.trial.TrialState.FAIL)
        self._pending = None


def list_samplers() -> List[str]:
    return SAMPLERS.names()


def build_sampler(name: str, groups: List[str], seed: int) -> Sampler:
    return SAMPLERS.get(name)(groups, seed)
