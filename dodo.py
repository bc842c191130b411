"""doit entry point. `doit run request=requests/demo.yaml` — see README.md.

Thin on purpose: the graph is built by agentos_tasks.graph, which tests call directly.
Variables: request=, policy=, run=, outputs=, answers=, key= (paths relative to the cwd).
"""

from agentos_tasks.interrupts import install_early_handlers

install_early_handlers()  # Ctrl-C while the graph's modules import: one line, no traceback

from agentos_tasks.graph import load_for_doit  # noqa: E402

DOIT_CONFIG, task_agentos = load_for_doit()
