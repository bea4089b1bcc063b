"""Run the whole stack locally; the same as `rstreams dev` (the logic is in rstreams/dev.py)."""

from rstreams.dev import main

if __name__ == "__main__":
    main()
