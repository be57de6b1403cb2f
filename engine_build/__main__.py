"""`python -m engine_build checkpoint=DIR output=DIR …` (same as `videoneva build`)."""
import sys

from videoneva.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
