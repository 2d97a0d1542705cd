"""`python -m stepline_billing`: run billing until SIGTERM/SIGINT."""

from stepline_billing.app import main

main()
