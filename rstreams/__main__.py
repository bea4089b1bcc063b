"""`python -m rstreams`: the same as the `rstreams` command."""

from rstreams.cli import main

if __name__ == "__main__":
    main()
