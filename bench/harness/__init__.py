"""The benchmarks' shared parts: servers and peers on loopback, the load generator, ``/proc`` readers, reports.

- ``servers``: moto's S3 server holding copies of a bundled model, ``mlserver start`` of this repository,
  timed one-row invocations, Prometheus counters;
- ``peers``: the systems compared against (plain MLServer, SageMaker's MMS stack, the HTTP floor);
- ``loadgen``: the closed-loop HTTP client;
- ``proc``: CPU time, RSS, PSS, open files and process trees from ``/proc``;
- ``stats``: percentiles, Zipf traces, an exact LRU simulation;
- ``floors``: the same work done directly in this process;
- ``report``: progress lines, JSON, the comparison's Markdown and plots.

``tests/`` is put on ``sys.path`` here, so the test suite's helpers import as ``support``.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")

if os.path.join(ROOT, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
