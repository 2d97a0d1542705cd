"""`python -m stepline_planner` runs the planner until SIGTERM/SIGINT."""

from stepline_planner.spec import SPEC
from stepline_runtime.lifecycle import run_service

run_service(SPEC)
