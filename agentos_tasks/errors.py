"""The one error type users see.

Every mistake a user can make (bad request, bad policy, dirty repo, policy violation,
failed step) becomes an `AgentosError` with a message, where it happened (file:line) and a
hint. The CLI and the doit reporter print it as one block and exit with `code`; no traceback.

Messages quote what a step, a tool or a repository chose (argv, file names, tool error
text), so `render` passes every field through `termsafe.escape`: the block reaches the
terminal without raw control, bidi or invisible characters, and each field stays on its
own line (a newline inside a message is shown as `\\n`, it cannot forge a `hint:` line).
`message`, `where` and `hint` keep the raw text for programs.
"""

from __future__ import annotations

from agentos_tasks.termsafe import escape

# Documented exit codes (docs/runs.md "Exit codes").
EXIT_USAGE = 2  # bad input: request, policy, answers file, command line
EXIT_POLICY = 3  # policy violation (pre-run or post-step)
EXIT_STEP = 4  # a step failed (command exit, patch does not apply, timeout)
EXIT_GATES = 5  # one or more gates failed, or verification failed
EXIT_STATE = 6  # run state refuses the action (sealed run, dirty target, moved branch, lock)
EXIT_INTERNAL = 70  # a bug in agentos (EX_SOFTWARE): the traceback is in a log file


class AgentosError(Exception):
    """A user-facing failure: what, where (file:line or step), and a hint."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        code: int = EXIT_USAGE,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        self.code = code

    def render(self) -> str:
        """One block of plain text: `error: <where>: <message>` and an optional hint line,
        every field escaped for the terminal (termsafe.escape, single-line)."""
        message = escape(self.message)
        head = f"error: {escape(self.where)}: {message}" if self.where else f"error: {message}"
        return head + (f"\n  hint: {escape(self.hint)}" if self.hint else "")

    def __str__(self) -> str:
        return self.render()


class PolicyViolation(AgentosError):
    """A policy decision that denies; `rule_id` names the rule that decided."""

    def __init__(
        self, rule_id: str, what: str, *, where: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(f"policy violation: {rule_id}: {what}", where=where, hint=hint,
                         code=EXIT_POLICY)
        self.rule_id = rule_id
        self.what = what


def internal_error(exc: BaseException) -> AgentosError:
    """The last resort for an exception nobody expected: the traceback goes to a log file
    (never the terminal), the user gets one block saying what failed, where the log is
    and how to report it."""
    import datetime
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "state")
    log_path = "(could not write a log)"
    for directory in (os.path.join(base, "agentos"), tempfile.gettempdir()):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            path = os.path.join(directory, f"agentos-crash-{stamp}-{os.getpid()}.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            log_path = path
            break
        except OSError:
            continue
    return AgentosError(f"internal error: {type(exc).__name__}: {exc}", code=EXIT_INTERNAL,
                        hint=f"this is a bug in agentos, not in your request; the full "
                             f"traceback is in {log_path}; please report it with that file "
                             "(docs/runs.md: Reporting a bug)")
