"""V2 load/unload storms during SageMaker traffic on the same models.

Two clients loop V2 ``load``/``unload`` of two models while two clients invoke those and
two other models over ``/invocations``, with room for 3 loaded models, until the SageMaker
clients have sent ``--requests`` requests. Then each model is invoked once more: a race
that was remembered as a failure shows there.

    python -m bench storm --requests 1000     # --quick: 100 requests
"""

import asyncio

from support.mixed_traffic import TRANSPORT_ERROR, Tally, invoke, v2_load_unload
from support.mixed_traffic import run as drive

from bench.harness.servers import mme_server, s3_with_models

CHURNED = ["NewYork_NY.tar.gz", "LosAngeles_CA.tar.gz"]
STEADY = ["Chicago_IL.tar.gz", "Houston_TX.tar.gz"]


async def storm(url: str, requests: int, seed: int) -> Tally:
    tally = Tally()
    clients = [v2_load_unload([CHURNED[0]]), v2_load_unload([CHURNED[1]]),
               invoke(CHURNED + STEADY), invoke(CHURNED + STEADY)]
    await drive(url, clients, tally, seed, stop=lambda: tally.count("invoke") >= requests)
    return tally


async def after(url: str) -> Tally:
    tally = Tally()
    for target in CHURNED + STEADY:
        done = []
        await drive(url, [invoke([target])], tally, 0, stop=lambda done=done: bool(done) or done.append(1))
    return tally


def summary(tally: Tally) -> dict:
    failed_invokes = sum(n for (kind, status), n in tally.statuses.items() if kind == "invoke" and status != 200)
    v2_5xx = sum(n for (kind, status), n in tally.statuses.items()
                 if kind.startswith("v2") and isinstance(status, int) and status >= 500)
    dropped = sum(n for (_, status), n in tally.statuses.items() if status == TRANSPORT_ERROR)
    return {"invokes": tally.count("invoke"), "failed_invokes": failed_invokes, "v2_calls": tally.count("v2-load") + tally.count("v2-unload"),
            "v2_5xx": v2_5xx, "dropped": dropped}


def add_arguments(parser):
    parser.add_argument("--requests", type=int, help="SageMaker requests during the storm (default 1000; --quick 100)")
    parser.add_argument("--seed", type=int, default=7)


def run(args) -> dict:
    requests = args.requests or (100 if args.quick else 1000)
    with s3_with_models(CHURNED + STEADY) as s3, mme_server(s3, max_loaded_models=3) as server:
        during = asyncio.run(storm(server.url, requests, args.seed))
        afterwards = asyncio.run(after(server.url))
    print("during the storm:", summary(during))
    print("statuses:", dict(sorted((f"{k}:{s}", n) for (k, s), n in during.statuses.items())))
    for key, body in during.examples.items():
        print("  e.g.", key, body)
    print("one request per model afterwards:", {f"{k}:{s}": n for (k, s), n in afterwards.statuses.items()})
    return {"during": summary(during), "statuses": {f"{k}:{s}": n for (k, s), n in during.statuses.items()},
            "afterwards": {f"{k}:{s}": n for (k, s), n in afterwards.statuses.items()}}
