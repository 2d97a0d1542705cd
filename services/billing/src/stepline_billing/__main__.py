"""`python -m stepline_billing`: run billing until SIGTERM/SIGINT."""

from stepline_billing.spec import SPEC
from stepline_runtime.lifecycle import run_service

run_service(SPEC)
