"""Gates: pure functions of a run directory (and, where named, the git repos) that
recompute every claim of a run and return PASS, FAIL or NOT_APPLICABLE.

Where each gate lives (one module per kind of evidence):

    static.no_subprocess, EX-B   static.py           the installed package's source (AST scan)
    R1, EX-A                     policy.py           the recorded policy, re-decided
    R2, EX-C                     worktree.py         worktree, target branch, sandbox records
    R3                           integrity.py        tape chain, checksums, records agree
    EX-D                         commits.py          patch files == commits; branch commits
    EX-E                         steps.py            step events on the tape vs manifests
    EX-F                         rollback.py         rollback proof, recomputed from git
    EX-G                         approvals.py        patch and ask-path approvals
    EX-H                         execution_result.py execution_result.json complete
    A1, A2, A3                   answers.py          questions stopped the run until answered
    TL-A .. TL-F                 tools.py            tool steps (checks in tool_*.py)

Around them: `common.py` (Gate, GateResult, verdicts, readers several gates share),
`context.py` (GateContext: every read of the run directory, recorded as evidence),
`request_record.py` (audit/request.json must say what audit/request.yaml says),
`gitlog.py` (git history in a constant number of calls), `runner.py` (the registry,
evaluation, cached results) and `report.py` (gates.json, JUnit, the console table).
"""



