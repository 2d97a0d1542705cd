"""`python -m stepline_executor`: run the tool executor until SIGTERM/SIGINT."""

from stepline_executor.spec import SPEC
from stepline_runtime.lifecycle import run_service

run_service(SPEC)
