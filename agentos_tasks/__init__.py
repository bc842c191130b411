"""agentos-tasks: run change requests from coding agents under policy, in a sandbox, with proof."""

__version__ = "0.1.0"
