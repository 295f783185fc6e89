import sys

from promptopt.cli.commands import main

sys.exit(main())
