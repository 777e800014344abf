"""The inference log's price in paired rounds: slipway and slipway-logged loaded in turn, several times over.

The main table measures each peer once per case, a minute or more apart. That is fine for ratios of 3x or 15x,
not for a cost of a few percent on a shared VM: the same server measured twice in a row moved by up to 15%
here (BENCHMARKS.md), with no other process busy. So the log's cost is measured in rounds that interleave the
two servers on the same load (A B, then B A, ...), each a short warmup and a short wrk run, and priced as the
median of the per-round ratios: a drift of the machine between rounds cancels within a round, and one disturbed
round moves the median little. How sure that median is comes with it (`median_interval`): on a VM whose rounds
scatter by +-15%, seven rounds may leave a 10% target unresolved, and the target then says so rather than
reading a verdict off noise.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import QuietWaiter
from bench.loadgen import Load, LoadResult, run_wrk


@dataclass(frozen=True)
class PairedRound:
    """One round: each server's req/s, measured back to back (`logged_first`: in which order)."""

    slipway_rps: float
    logged_rps: float
    logged_first: bool
    failures: int  # non-2xx responses and socket errors of both runs

    @property
    def ratio(self) -> float:
        """slipway-logged's req/s over slipway's."""
        return self.logged_rps / self.slipway_rps


@dataclass(frozen=True)
class PairedLogCost:
    """The rounds of one batch size and the cost they give: 1 - the median per-round ratio."""

    rows: int
    duration_s: float
    warmup_s: float
    rounds: tuple[PairedRound, ...]

    @property
    def median_ratio(self) -> float:
        return statistics.median(r.ratio for r in self.rounds)

    @property
    def cost(self) -> float:
        """Share of slipway's req/s the log costs (negative: the logged server was the faster)."""
        return 1.0 - self.median_ratio

    @property
    def cost_range(self) -> tuple[float, float]:
        """The lowest and highest cost of a single round."""
        costs = [1.0 - r.ratio for r in self.rounds]
        return min(costs), max(costs)

    def median_interval(self, confidence: float = 0.8) -> tuple[float, float, float]:
        """A distribution-free interval for the median cost: the k-th lowest and k-th highest round (order
        statistics; the rounds' costs need no distribution, only independence), with the largest k whose
        coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at least `confidence` (k = 1 when none is: few rounds).
        Returns (low, high, coverage). With 7 rounds: the 2nd lowest to the 2nd highest, 87.5%."""
        costs = sorted(1.0 - r.ratio for r in self.rounds)
        n = len(costs)
        chosen, coverage = 1, _coverage(n, 1)
        for k in range(2, n // 2 + 1):
            if _coverage(n, k) < confidence:
                break
            chosen, coverage = k, _coverage(n, k)
        return costs[chosen - 1], costs[n - chosen], coverage

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.rounds)


def _coverage(n: int, k: int) -> float:
    """How often the k-th lowest and k-th highest of n independent draws hold their median between them."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n


def measure_paired(
    slipway: tuple[str, Path],
    logged: tuple[str, Path],
    rows: int,
    rounds: int,
    load: Load,
    warmup_s: float,
    quiet: QuietWaiter,
    progress: Callable[[str], None],
) -> PairedLogCost:
    """`rounds` rounds of both servers (url, body file) under `load`; the order alternates between rounds."""
    results: list[PairedRound] = []
    for index in range(rounds):
        logged_first = index % 2 == 1
        order = (logged, slipway) if logged_first else (slipway, logged)
        measured: list[LoadResult] = []
        for url, body in order:
            quiet.wait()
            run_wrk(url, body, dataclasses.replace(load, duration_s=warmup_s))
            measured.append(run_wrk(url, body, load))
        logged_result, slipway_result = measured if logged_first else measured[::-1]
        result = PairedRound(
            slipway_rps=slipway_result.requests_per_s,
            logged_rps=logged_result.requests_per_s,
            logged_first=logged_first,
            failures=sum(r.non2xx + r.socket_error_count for r in measured),
        )
        results.append(result)
        progress(
            f"round {index + 1}/{rounds}: slipway {result.slipway_rps:,.0f}, slipway-logged "
            f"{result.logged_rps:,.0f} req/s -> log cost {1 - result.ratio:.1%}"
        )
    return PairedLogCost(rows=rows, duration_s=load.duration_s, warmup_s=warmup_s, rounds=tuple(results))
