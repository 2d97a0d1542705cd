"""`python -m stepline_frontdoor`: serve the console until SIGTERM/SIGINT."""

from stepline_frontdoor.app import main

main()
