"""`python -m stepline_router`: run the model router until SIGTERM/SIGINT."""

from stepline_router.spec import SPEC
from stepline_runtime.lifecycle import run_service

run_service(SPEC)
