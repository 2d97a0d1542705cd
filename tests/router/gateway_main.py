"""The router process with the keys twin: `python -m tests.router.gateway_main`.

The same spec and composition root as `python -m stepline_router` (`app.build`), with the
gateway's keys ports given from STEPLINE_TEST_KEYS (JSON, see `keys_from_json`) instead of the
dev key.
"""

from __future__ import annotations

import asyncio
import os
import signal

from stepline_router.app import build_with_keys
from stepline_router.config import Settings
from stepline_router.spec import SPEC
from stepline_runtime.lifecycle import serve
from stepline_runtime.logs import configure_logging
from tests.router.keys_twin import keys_from_json


async def _main() -> None:
    settings = Settings(service_name=SPEC.name)
    configure_logging(SPEC.name, settings.log_level, settings.log_format)
    authenticator, quotas = keys_from_json(os.environ["STEPLINE_TEST_KEYS"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(SPEC, settings, stop, build=build_with_keys(authenticator, quotas))


if __name__ == "__main__":
    asyncio.run(_main())
