import sys

from edge.agent.cli import main

sys.exit(main())
