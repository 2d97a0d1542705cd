"""`python -m stepline_router`: run the model router until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from stepline_router.app import main

if __name__ == "__main__":
    asyncio.run(main())
