"""Benchmarks of the whole stack (`python -m bench`)."""

# Every load comes from one address (one caller in open mode): per-caller limits off, so
# the figures measure the stack, not the limits.
NO_CALLER_LIMITS = {
    "RATE_CREATES_PER_MIN": "0",
    "MAX_RUNNING_PER_CALLER": "0",
    "MAX_FOLLOWERS_PER_SESSION": "0",
    "MAX_FOLLOWERS_PER_CALLER": "0",
}
