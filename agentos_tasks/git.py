"""Hardened git: the only module that talks to git, always through proc.run.

A target repository is untrusted input, and so is everything a step leaves in a
worktree. Two kinds of host git call, and nothing else:

- **Private git dirs** (`Git(..., private_dir=...)`): every call that touches a working
  tree (checkout, status, add, apply, am, read-tree) runs with GIT_DIR set to a git dir
  this module synthesized (`init_private_repo`): its config holds the repository format
  and nothing else, its hooks dir does not exist, and the target's objects are reached
  as a read-only alternate. A filter, textconv, fsmonitor, hooks path or include that a
  repository's config names (or that a tracked file becomes through an include) is never
  read, so it cannot run, whenever it appears.
- **The target repository itself** (`Git(repo)`): plumbing only (refs, objects, worktree
  list, patch ids). Its config is read in full once per Git object (`git config --list`,
  which executes nothing, stdin /dev/null): a config with `include`/`includeIf` is
  refused (`RepositoryConfigError`), because then git's view depends on files outside
  it; every command-naming key it does define is blanked on top of HARDENING.

Every call: stdin from /dev/null unless we pass data, a timeout, an allowlisted
environment (no user/global/system config, no GIT_* from the caller, the executor's own
identity, no terminal prompts), and submodules ignored (never a child git in a
directory a step could have made a repository).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentos_tasks import proc
from agentos_tasks.errors import EXIT_USAGE, AgentosError
from agentos_tasks.model import Author, Change

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

HARDENING: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.autocrlf=false",
    "core.safecrlf=false",
    "core.pager=cat",
    "core.editor=false",
    "core.sshCommand=false",
    "core.askPass=",
    "core.quotePath=false",
    "core.symlinks=true",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "gpg.program=false",
    "diff.external=",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "diff.relative=false",
    "apply.whitespace=nowarn",
    "am.threeWay=false",
    "am.keepcr=true",
    "am.messageId=false",
    "format.signature=",
    "format.signatureFile=",
    "format.coverLetter=false",
    "format.useAutoBase=false",
    "format.numbered=false",
    "format.thread=false",
    "format.attach=false",
    "format.from=false",
    "format.suffix=.patch",
    "gc.auto=0",
    "maintenance.auto=false",
    "protocol.allow=never",
    "submodule.recurse=false",
    "diff.ignoreSubmodules=all",
    "status.submoduleSummary=false",
    "fetch.recurseSubmodules=false",
    "core.alternateRefsCommand=",
    # keys that name files git reads: a repository could name a FIFO (a hang) or /dev/zero
    # (unbounded memory); agentos needs none of them
    "core.attributesFile=/dev/null",
    "core.excludesFile=/dev/null",
    "diff.orderFile=/dev/null",
    "mailmap.file=/dev/null",
    "mailmap.blob=",
    "blame.ignoreRevsFile=",
    "commit.template=",
    "notes.displayRef=",
    "core.notesRef=refs/notes/agentos-none",
    "init.templateDir=",
    "user.useConfigOnly=false",
    "log.showSignature=false",
    "advice.graftFileDeprecated=false",
    "i18n.commitEncoding=UTF-8",
)
# Keys in a repository's config that name a command git would run.
_COMMAND_KEYS = re.compile(
    r"^(filter\.[^\n]+\.(clean|smudge|process)|diff\.[^\n]+\.(textconv|command)"
    r"|merge\.[^\n]+\.driver|hook\.[^\n]+\.command|credential\..*helper|core\.alternateRefsCommand"
    r"|uploadpack\.packObjectsHook|sequence\.editor|pager\..+|alias\..+)$", re.IGNORECASE)
_FILTER_KEY = re.compile(r"^filter\.(.+)\.(clean|smudge|process)$", re.IGNORECASE)
# Keys that make git read configuration from somewhere else, now or later.
_FULL_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_INCLUDE_KEY = re.compile(r"^(include|includeif\.[^\n]*)\.path$", re.IGNORECASE)


class RepositoryConfigError(AgentosError):
    """The target's git config makes git read configuration we cannot vet."""


def safe_search_path(raw: str | None) -> str:
    """PATH without empty or relative entries: those resolve against the cwd, and the cwd
    of a git call is a worktree an untrusted step just wrote (a planted `git`)."""
    entries = (raw if raw is not None else os.defpath).split(os.pathsep)
    return os.pathsep.join(dict.fromkeys(e for e in entries if e and os.path.isabs(e)))


_GIT_BINARY: list[str] = []


def git_binary() -> str:
    """Absolute path of the host's git, resolved once from the sanitised PATH."""
    if not _GIT_BINARY:
        found = shutil.which("git", path=safe_search_path(os.environ.get("PATH")))
        if found is None:
            raise AgentosError("git not found on PATH", hint="install git (>= 2.31)")
        _GIT_BINARY.append(str(Path(found).resolve()))
    return _GIT_BINARY[0]


def git_env(author: Author, extra: Mapping[str, str] | None = None,
            config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The whole environment git runs with: nothing from the user's git setup leaks in.

    `config` pairs travel as GIT_CONFIG_COUNT/KEY_n/VALUE_n (command-line precedence),
    never as `-c key=value`: git splits `-c` at the first `=`, so a repository filter named
    `a=b` could not be blanked that way.
    """
    env = {"PATH": safe_search_path(os.environ.get("PATH"))}
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    env.update({
        "LANG": "C", "LC_ALL": "C", "TZ": "UTC",
        "HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat",
        # refs/replace/* and grafts would let a repository show git a different history
        # than the objects really hold (a replaced commit hides what the branch carries)
        "GIT_NO_REPLACE_OBJECTS": "1", "GIT_GRAFT_FILE": os.devnull,
        "GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email,
    })
    if extra:
        env.update(extra)
    return env


@dataclass
class Git:
    """git bound to one working directory.

    With `private_dir` (a private git dir from init_private_repo) git reads no repository
    config but ours: GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE are set explicitly, so
    nothing is discovered from the working directory. Without it, git runs in the target
    repository, hardened against its config (see the module docstring).
    `alternates` adds object dirs to read from (GIT_ALTERNATE_OBJECT_DIRECTORIES).
    """

    cwd: Path
    author: Author = field(default_factory=Author)
    private_dir: Path | None = None
    work_tree: Path | None = None
    index_file: Path | None = None
    alternates: tuple[Path, ...] = ()
    _overrides: tuple[tuple[str, str], ...] | None = None
    # object id -> its tree id: an object never changes, so what git once said about a
    # full id (or what commit_tree was given) holds for good (replace refs are off)
    _trees: dict[str, str] = field(default_factory=dict, repr=False)
    # one `diff-tree --stdin` kept running for commit_changes (a question per step)
    _diff_tree: proc.HostCoprocess | None = field(default=None, repr=False, compare=False)

    def _location_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.private_dir is not None:
            env["GIT_DIR"] = str(self.private_dir)
            env["GIT_WORK_TREE"] = str(self.work_tree or self.cwd)
            if self.index_file is not None:
                env["GIT_INDEX_FILE"] = str(self.index_file)
        if self.alternates:
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.pathsep.join(map(str, self.alternates))
        return env

    def _config_overrides(self) -> tuple[tuple[str, str], ...]:
        """Blank every command-running key the repository's config defines; refuse a
        config that includes other files (its content could change under us)."""
        if self.private_dir is not None:
            return ()  # our own config: the repository format, nothing else
        if self._overrides is None:
            listed = self._raw(["config", "--list", "-z"], (), check=False)
            overrides: list[tuple[str, str]] = []
            for entry in listed.stdout.split(b"\0"):
                key = entry.split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
                if _INCLUDE_KEY.match(key):
                    raise RepositoryConfigError(
                        f"the git config of {self.cwd} uses {key}: agentos runs git only "
                        "on a configuration it can read in full, and an included file "
                        "(possibly a tracked one) can name programs git would run",
                        code=EXIT_USAGE, where=str(self.cwd / ".git" / "config"),
                        hint="remove the include from the repository's config (agentos "
                             "never reads ~/.gitconfig or /etc/gitconfig, so includes there "
                             "are harmless)")
                if not key or not _COMMAND_KEYS.match(key):
                    continue
                overrides.append((key, ""))
                match = _FILTER_KEY.match(key)
                if match:
                    overrides.append((f"filter.{match.group(1)}.required", "false"))
            self._overrides = tuple(dict.fromkeys(overrides))
        return self._overrides

    def _raw(self, args: Sequence[str], overrides: Sequence[tuple[str, str]], *,
             input: bytes | None = None, check: bool = True,
             env: Mapping[str, str] | None = None) -> proc.ProcResult:
        config = [(key, value) for key, _, value in (i.partition("=") for i in HARDENING)]
        return proc.run([git_binary(), *args], cwd=self.cwd,
                        env=git_env(self.author, {**self._location_env(), **(env or {})},
                                    [*config, *overrides]),
                        input=input, check=check)

    def _coprocess(self, *args: str) -> proc.HostCoprocess:
        """git kept running on its --stdin, with the environment `_raw` gives one call."""
        config = [(key, value) for key, _, value in (i.partition("=") for i in HARDENING)]
        return proc.HostCoprocess(
            [git_binary(), *args], cwd=self.cwd,
            env=git_env(self.author, self._location_env(),
                        [*config, *self._config_overrides()]))

    def run(self, *args: str, input: bytes | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> proc.ProcResult:
        return self._raw(args, self._config_overrides(), input=input, check=check, env=env)

    def out(self, *args: str) -> str:
        return self.run(*args).text.strip()

    def rev_parse(self, rev: str) -> str:
        result = self.run("rev-parse", "--verify", "-q", "--end-of-options", rev, check=False)
        if result.returncode != 0:
            raise AgentosError(f"cannot resolve {rev!r} in {self.cwd}")
        return result.text.strip()

    def try_rev_parse(self, rev: str) -> str | None:
        result = self.run("rev-parse", "--verify", "-q", "--end-of-options", rev, check=False)
        return result.text.strip() if result.returncode == 0 else None

    def tree_of(self, rev: str) -> str:
        """The tree id of `rev`; asked of git once per full object id."""
        if not _FULL_OID.fullmatch(rev):
            return self.rev_parse(f"{rev}^{{tree}}")
        if rev not in self._trees:
            self._trees[rev] = self.rev_parse(f"{rev}^{{tree}}")
        return self._trees[rev]

    def git_dir(self) -> Path:
        return Path(self.out("rev-parse", "--absolute-git-dir"))

    def common_dir(self) -> Path:
        common = Path(self.out("rev-parse", "--git-common-dir"))
        return common if common.is_absolute() else (self.cwd / common).resolve()

    def current_branch(self) -> str | None:
        result = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
        return result.text.strip() or None

    def is_clean(self) -> tuple[bool, str]:
        """Clean = no staged, unstaged or untracked (non-ignored) changes."""
        status = self.run("status", "--porcelain=v1", "-z", "--untracked-files=normal",
                          "--ignore-submodules=all")
        entries = [e for e in status.stdout.split(b"\0") if e]
        return (not entries, ", ".join(e.decode("utf-8", "replace") for e in entries[:5]))

    def commits_between(self, old: str, new: str) -> list[str]:
        text = self.out("rev-list", "--reverse", "--topo-order", f"{old}..{new}")
        return text.split() if text else []

    def patch_ids(self, text: bytes) -> list[tuple[str, str]]:
        """(patch id, commit) for every patch in `text` (format-patch mbox or `log -p`)."""
        out = self.run("patch-id", "--stable", input=text).text
        return [(line.split()[0], line.split()[1]) for line in out.splitlines() if line]

    def range_patch_ids(self, old: str, new: str) -> list[tuple[str, str]]:
        """Patch ids of each commit in old..new, oldest first, in one pair of git calls."""
        log = self.run("log", "--reverse", "--topo-order", "-p", "--binary", "--full-index",
                       "--no-textconv", "--no-ext-diff", "--no-color", "--no-renames",
                       "--format=commit %H", f"{old}..{new}").stdout
        return self.patch_ids(log)

    def commit_patch(self, commit: str) -> bytes:
        """The exported patch of one commit, as `git am` takes it back byte-exactly."""
        return self.run("format-patch", "-1", "--stdout", "--binary", "--full-index", "-k",
                        "--no-signature", "--no-numbered", "--no-thread", "--no-attach",
                        "--no-renames", "--no-textconv", "--no-ext-diff", "--no-color",
                        "--encoding=UTF-8", commit).stdout

    def status_changes(self) -> list[Change]:
        """Everything in the worktree that differs from HEAD, without staging anything.

        One `status --porcelain=v2` call: tracked changes with old and new modes,
        untracked files, and every ignored file individually (`--ignored=traditional`
        with `--untracked-files=all`), so the policy judges what really changed.
        """
        raw = self.run("status", "--porcelain=v2", "-z", "--no-renames",
                       "--untracked-files=all", "--ignored=traditional",
                       "--ignore-submodules=all").stdout
        return parse_status_v2(raw)

    def commit_tree(self, tree: str, parent: str, message_file: Path,
                    date: str | None = None) -> str:
        """A commit of `tree` on `parent` with the message from a file, verbatim (plumbing:
        no hooks, no message cleanup, no status run over the worktree)."""
        env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else None
        commit = self.run("commit-tree", tree, "-p", parent, "-F", str(message_file),
                          env=env).text.strip()
        if _FULL_OID.fullmatch(commit) and _FULL_OID.fullmatch(tree):
            self._trees[commit] = tree  # git just made this commit of exactly this tree
        return commit

    def commit_index(self, parent: str, message_file: Path, date: str) -> str:
        """Commit the index on `parent` (HEAD, detached) with the message from a file,
        verbatim, and move HEAD to it: write-tree + commit-tree + update-ref in one git
        process. No hook runs (core.hooksPath=/dev/null), no maintenance (maintenance.auto
        =false), the message is not cleaned up, an empty commit is allowed (the caller
        finds it by its empty diff and moves HEAD back). Returns the new commit's id,
        read back from the private git dir's HEAD."""
        self.run("commit", "-q", "--no-verify", "--allow-empty", "--allow-empty-message",
                 "--cleanup=verbatim",
                 "--no-status", "--no-edit", "--untracked-files=no", "-F", str(message_file),
                 env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
        if self.private_dir is None:
            raise AgentosError("commit_index needs the run's private git dir")
        head = (self.private_dir / "HEAD").read_text().strip()
        if not _FULL_OID.fullmatch(head):
            raise AgentosError(f"git commit left HEAD unreadable in {self.cwd}")
        return head

    def commit_changes(self, commit: str, parent: str) -> tuple[str, list[tuple[str, str, str]]]:
        """(tree, changes) of a commit against `parent`, which must be its one parent, in
        one `diff-tree`: changes as (old mode, new mode, path)."""
        args = ("diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-textconv",
                "--no-ext-diff", "--always", "--format=%T %P")
        raw = None
        if _FULL_OID.fullmatch(commit):
            if self._diff_tree is None:
                self._diff_tree = self._coprocess(*args, "--stdin")
            raw = self._diff_tree.ask(commit.encode())
            if raw is None:
                self._diff_tree = None
        if raw is None:  # the one-shot way, which also says why git refused
            raw = self.run(*args, commit).stdout
        header, _, rest = raw.partition(b"\0")
        tree_id, _, parents = header.decode().strip().partition(" ")
        if not _FULL_OID.fullmatch(tree_id) or parents != parent:
            raise AgentosError(f"git made commit {commit} with parents {parents or 'none'!r}, "
                               f"not {parent}")
        self._trees[commit] = tree_id
        return tree_id, _parse_raw(rest.lstrip(b"\n"))

def init_private_repo(git_dir: Path, *, fmt_config: Path, alternates: Sequence[Path],
                      head: str) -> None:
    """Make (or refresh) a private git dir: a synthesized config holding only the
    repository format of `fmt_config` (read as data, includes never followed), the object
    dirs in `alternates` as read-only alternates, no hooks, HEAD detached at `head`.

    Objects git writes through it stay in `git_dir/objects` until someone packs them
    elsewhere; the alternates are never written."""
    from agentos_tasks.sandbox.gitview import read_repository_format

    core, extensions = read_repository_format(str(fmt_config))
    lines = ["[core]", f"\trepositoryformatversion = {core.pop('repositoryformatversion', '0')}"]
    lines += [f"\t{key} = {value}" for key, value in sorted(core.items())]
    lines += ["\tbare = false", "\tlogAllRefUpdates = false"]
    object_format = extensions.get("objectformat")
    if object_format:
        lines += ["[extensions]", f"\tobjectformat = {object_format}"]
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (git_dir / sub).mkdir(parents=True, exist_ok=True)
    (git_dir / "config").write_text("\n".join(lines) + "\n")
    (git_dir / "objects" / "info" / "alternates").write_text(
        "".join(f"{os.path.abspath(a)}\n" for a in alternates))
    (git_dir / "HEAD").write_text(f"{head}\n")


_PRIVATE_OBJECTS_MAX_ENTRIES = 500_000


def private_objects_usable(objects: Path, alternate: Path) -> bool:
    """May a run's private object dir from a received run directory be read as an
    alternate? Only when it is what init_private_repo makes: a real directory of plain
    directories and files (no link, FIFO or device anywhere, bounded), whose only
    alternate is the target's own object dir: git follows `info/alternates` chains, so
    anything else could point a reader at a FIFO or another repository."""
    try:
        if not stat.S_ISDIR(os.lstat(objects).st_mode):
            return False
        listed = (objects / "info" / "alternates")
        if not stat.S_ISREG(os.lstat(listed).st_mode):
            return False
        lines = listed.read_bytes()[:65536].decode("utf-8", "replace").split()
    except OSError:
        return False
    if lines != [os.path.abspath(alternate)]:
        return False
    count = 0
    for root, dirs, files in os.walk(objects):  # never follows links
        for name in (*dirs, *files):
            count += 1
            mode = os.lstat(os.path.join(root, name)).st_mode
            if count > _PRIVATE_OBJECTS_MAX_ENTRIES or not (
                    stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return False
    return True


def parse_numstat_z(raw: bytes) -> list[str]:
    """Every path (both names of a rename) in `git apply --numstat -z` output."""
    fields = raw.split(b"\0")
    paths: list[str] = []
    i = 0
    while i < len(fields) and fields[i]:
        name = fields[i].split(b"\t", 2)[2]
        if name:
            paths.append(name.decode("utf-8", "surrogateescape"))
            i += 1
        else:  # a rename: "added\tdeleted\t\0old\0new\0"
            paths += [fields[i + 1].decode("utf-8", "surrogateescape"),
                      fields[i + 2].decode("utf-8", "surrogateescape")]
            i += 3
    return paths


def parse_status_v2(raw: bytes) -> list[Change]:
    """Parse `git status --porcelain=v2 -z --no-renames` into Changes."""
    changes: list[Change] = []
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        kind = entry[:1]
        if kind in (b"?", b"!"):
            path = entry[2:].decode("utf-8", "surrogateescape").rstrip("/")
            changes.append(Change(path=path, status="A", ignored=kind == b"!"))
        elif kind == b"1":
            fields = entry.split(b" ", 8)
            xy, m_head, m_work = fields[1].decode(), fields[3].decode(), fields[5].decode()
            path = fields[8].decode("utf-8", "surrogateescape")
            code = xy[1] if xy[1] != "." else xy[0]
            status = {"D": "D", "T": "T", "A": "A"}.get(code, "M")
            changes.append(Change(
                path=path, status=status,  # type: ignore[arg-type]
                old_mode=None if m_head == "000000" else m_head,
                new_mode=None if m_work == "000000" else m_work,
            ))
        elif kind == b"u":
            path = entry.split(b" ", 10)[10].decode("utf-8", "surrogateescape")
            changes.append(Change(path=path, status="M"))
    return changes


def find_branch_worktree(git: Git, branch: str) -> Path | None:
    """The worktree (main or linked) that has `branch` checked out, if any."""
    listing = git.run("worktree", "list", "--porcelain", "-z").stdout.split(b"\0")
    current: Path | None = None
    for entry in listing:
        text = entry.decode("utf-8", "surrogateescape")
        if text.startswith("worktree "):
            current = Path(text[len("worktree "):])
        elif text == f"branch refs/heads/{branch}" and current is not None:
            return current
    return None


def _parse_raw(raw: bytes) -> list[tuple[str, str, str]]:
    """(old mode, new mode, path) of each record of `diff-tree -r -z --raw` output."""
    fields = raw.split(b"\0")
    found: list[tuple[str, str, str]] = []
    for meta, name in zip(fields[0::2], fields[1::2], strict=False):
        if not meta:
            break
        parts = meta.decode().lstrip(":").split(" ")
        found.append((parts[0], parts[1], name.decode("utf-8", "surrogateescape")))
    return found

