"""`agentos fleet`: many requests at once, on local worker processes or on Ray.

worker.py runs one request on a fresh clone (never the target); queue.py lands the
results on the real target, one at a time per branch, re-running a run whose base moved;
engines.py is where requests run (threads that start processes, or Ray tasks); cli.py is
the command. See docs/fleet.md.
"""
