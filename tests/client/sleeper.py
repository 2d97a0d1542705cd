"""A stand-in service process for supervisor tests: sleeps until it is stopped."""

import time

if __name__ == "__main__":
    time.sleep(600)
