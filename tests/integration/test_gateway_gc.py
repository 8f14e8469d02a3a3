"""The gateway process tunes the garbage collector once it serves (see `gateway/serve.py`):
start-up's objects frozen, a larger young generation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import asyncio, gc, json, os, signal
    from connwise.config import load_gateway_config
    from connwise.gateway.serve import serve

    CONFIG = """
    node_id = "gc"
    [[listeners]]
    name = "web"
    kind = "http"
    bind = "127.0.0.1:0"
    [[routes]]
    listener = "web"
    group = "origin"
    [groups.origin]
    backends = ["127.0.0.1:9"]
    warm_target = 0
    [groups.origin.health]
    kind = "none"
    """

    async def main():
        before = (gc.get_freeze_count(), gc.get_threshold()[0])
        ready = asyncio.Event()
        task = asyncio.create_task(serve(load_gateway_config(CONFIG), None, admin=False,
                                         ready=ready))
        await ready.wait()
        serving = (gc.get_freeze_count(), gc.get_threshold()[0])
        os.kill(os.getpid(), signal.SIGTERM)
        await task
        print(json.dumps({"before": before, "serving": serving}))

    asyncio.run(main())
''')


def test_start_up_objects_are_frozen_and_the_young_generation_is_larger() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["before"] == [0, 700]
    frozen, threshold = figures["serving"]
    assert frozen > 10_000  # the modules and the gateway, at least
    assert threshold == 5000
