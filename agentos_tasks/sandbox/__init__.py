"""The sandbox layer: what a confined program may see and use, one mechanism per module.

Nothing in this package starts a process; `agentos_tasks.proc.run_confined` is the only
caller that turns these plans into a running program (agentos_tasks/gates/static.py proves
it), and no module here imports proc. Each module can be audited alone:

- `spec`: ConfinedSpec and ConfinedResult, the records proc, the executor and tools share;
- `backend`: which backend a run gets (bwrap, or "none" only under isolation: best-effort);
- `hostfs`: how host paths are classified (system dirs, /proc /sys /dev, home dirs) and
  the head reader used on files of the host or the worktree;
- `program`: finding argv[0] as the sandboxed PATH lookup will, following shebangs only
  as far as trust allows; `pyenv`: a shim resolved to its real interpreter without
  running pyenv; `install_layout`: which host paths of a program's installation are
  bound (a prefix, its directory, or in a home directory only its own files);
- `gitview`: the repository's git dir as a step sees it (no config, hooks, logs);
- `bwrap`: the bwrap command line (namespaces, system dirs, /etc, mounts, probe argv);
- `seccomp`: the classic-BPF system-call filter bwrap loads;
- `preexec`: the forked child's setup before exec (cgroup, parent-death signal, session
  keyring, rlimits);
- `cgroups`: per-run cgroups, their owner names, and the guard and sweep that remove a
  dead executor's (also run as a stdlib-only script by proc: `python -I -S cgroups.py`).
"""
