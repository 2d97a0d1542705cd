"""`python -m stepline_planner` runs the planner until SIGTERM/SIGINT."""

from stepline_planner.app import main

main()
