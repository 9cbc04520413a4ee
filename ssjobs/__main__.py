"""``python -m ssjobs``: the command line (also the entry point of the one-file binary)."""
from ssjobs.cli import main

if __name__ == "__main__":
    main()
