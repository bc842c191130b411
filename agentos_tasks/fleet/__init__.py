"""`agentos fleet`: many requests at once, on local worker threads or on Ray.

worker.py runs one request on a fresh clone of its target (never the target itself);
queue.py lands the results on the real target, one at a time, re-running a run whose
base moved; engines.py is where requests run (threads that start processes, or Ray
tasks). See docs/fleet.md.
"""
