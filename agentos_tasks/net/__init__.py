"""The network a sandboxed step may use: an allowlist (pure; also used by the policy
loader and the gates), the filtering proxy that enforces it from outside the sandbox
(`python -m agentos_tasks.net.serve`), and the ledger it writes. See docs/network.md."""
