"""Handing a step to a coding-agent CLI: adapters (argv, claims) and task/result packs."""
