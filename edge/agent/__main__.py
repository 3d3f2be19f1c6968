"""``python -m edge.agent``: what a device runs (``pip install "fedge[agent]"``)."""

import sys

try:
    from edge.agent.cli import main

    code = main()
except ModuleNotFoundError as e:  # a device without the agent's extra: say which to install, no traceback
    print(
        f'error: the device agent needs {e.name}, which comes with the agent extra: pip install "fedge[agent]" '
        '(from a checkout: pip install -e ".[agent]")',
        file=sys.stderr,
    )
    code = 2
sys.exit(code)
