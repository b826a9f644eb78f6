"""Standard errors of per-token means from running sums, the way llama-perplexity computes them
(so figures compare with its `+/-`): tokens are treated as independent samples."""

from __future__ import annotations

import math


def mean_stderr(total: float, sq_total: float, n: int) -> float:
    """Standard error of the mean of n values from their sum and sum of squares:
    sqrt((E[x²] − E[x]²) / (n − 1)); NaN for fewer than two values. Rounding can make the
    variance of near-constant values slightly negative: that is zero spread, not an error."""
    if n < 2:
        return math.nan
    mean = total / n
    return math.sqrt(max(sq_total / n - mean * mean, 0.0) / (n - 1))


def proportion_stderr(hits: int, n: int) -> float:
    """Standard error of a proportion hits / n (binomial): sqrt(p (1 − p) / (n − 1)), as
    llama-perplexity reports its "same top p"; NaN for fewer than two trials."""
    if n < 2:
        return math.nan
    p = hits / n
    return math.sqrt(p * (1 - p) / (n - 1))
