import sys

from dispatcher.emulator.cli import main

sys.exit(main())
