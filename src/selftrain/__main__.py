"""``python -m selftrain`` (and ``accelerate launch -m selftrain``): the command line."""

from selftrain.cli import main

if __name__ == "__main__":
    main()
