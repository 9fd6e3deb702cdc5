"""``python -m dispatcher.emulator``: the emulator as a process."""

import sys

from dispatcher.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
