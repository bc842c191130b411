"""The policy: what a request may change and run, loaded from YAML/JSON, decided purely.

Every decision is a `Decision` that names the rule that made it (`rule_id`: the rule's own
`id`, or a stable generated one such as ``paths.deny[0]``), so the tape, the report and the
gates can all say *why*. The functions here never start a process and never read the clock:
the executor calls them before anything runs (`check_request`) and after every step over
what really changed (`check_changes`), and the gates call the same functions again to
recompute both decisions from the recorded artifacts.

Path rules are gitignore (gitwildmatch) globs compiled with `pathspec`. Deny beats ask beats
allow; a path no allow rule matches is denied (``paths.default``). `ask` rules deny in a
headless run. Deny and ask globs match case-insensitively (a deny can only get stronger:
on a case-insensitive filesystem ``SECRETS/x`` *is* ``secrets/x``); allow globs match
exactly. A ``.git`` path component (in any case, and its NTFS aliases) is refused whatever
the policy says, and so are names with control or invisible characters (`names`).

What a step leaves is judged for what it is, not only for its name: a symlink by what it
resolves to (deny and ask apply to the target too, `aliases` for links to directories), a
file that lands executable by ``paths.executable``. Counts, sizes and path lengths of
everything a step leaves are bounded by `agentos_tasks.leftovers`.

The package, lowest first: `names` (characters a name may not carry), `aliases` (what a
symlink to a directory exposes), `paths` (normalising, safe targets, globs), `schema`
(the file format, its records, `load_policy`), `decide` (`Decision` and every check
before a step runs), `changes` (`check_changes`, after it ran). Callers import from
here: ``from agentos_tasks.policy import check_request``.
"""

from __future__ import annotations

from agentos_tasks.policy.changes import check_changes
from agentos_tasks.policy.decide import (
    Decision,
    check_request,
    decide_argv,
    decide_executable,
    decide_path,
    decide_tool,
    needs_approval,
    step_env,
    step_network,
    tool_network,
)
from agentos_tasks.policy.paths import compile_glob, normalize_path, safe_target
from agentos_tasks.policy.schema import (
    DEFAULT_LIMITS,
    POLICY_SCHEMA,
    RESERVED_RULE_IDS,
    CommandRule,
    Limits,
    PathRule,
    Policy,
    ToolRule,
    default_policy_path,
    load_policy,
)

__all__ = [
    "DEFAULT_LIMITS", "POLICY_SCHEMA", "RESERVED_RULE_IDS",
    "CommandRule", "Decision", "Limits", "PathRule", "Policy", "ToolRule", "check_changes",
    "check_request", "compile_glob", "decide_argv", "decide_executable", "decide_path",
    "decide_tool", "default_policy_path", "load_policy", "needs_approval", "normalize_path",
    "safe_target", "step_env", "step_network", "tool_network",
]
