"""`python -m stepline_frontdoor`: serve the console until SIGTERM/SIGINT."""

from stepline_frontdoor.spec import SPEC
from stepline_runtime.lifecycle import run_service

run_service(SPEC)
