"""Percentiles, Zipf traces and an exact LRU simulation."""

import collections
import random

import numpy as np


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def lru_hit_ratio(trace, capacity):
    """Hit ratio of an exact LRU cache of ``capacity`` entries over ``trace``."""
    cache, hits = collections.OrderedDict(), 0
    for key in trace:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            cache[key] = True
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(trace)


def zipf_trace(n_models, n_requests, s=1.1, seed=7):
    """``n_requests`` model indices drawn from Zipf(``s``) over ``n_models``."""
    rng = random.Random(seed)
    weights = [1 / (rank**s) for rank in range(1, n_models + 1)]
    return rng.choices(range(n_models), weights=weights, k=n_requests)


def zipf_sampler(n_models, s=1.1, seed=11):
    """A function drawing one model index from Zipf(``s``) over ``n_models`` per call."""
    rng = random.Random(seed)
    weights = [1 / (rank**s) for rank in range(1, n_models + 1)]
    cumulative = list(np.cumsum(weights))
    return lambda: rng.choices(range(n_models), cum_weights=cumulative, k=1)[0]
