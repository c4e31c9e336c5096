import sys

from stemloop.flows.cli.main import main

sys.exit(main())
