import sys

from agentos_tasks.cli import main

sys.exit(main())
