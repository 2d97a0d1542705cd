"""`python -m stepline_executor`: run the tool executor until SIGTERM/SIGINT."""

from stepline_executor.app import main

main()
