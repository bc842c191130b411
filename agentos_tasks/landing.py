"""Landing: how a run's tested commits reach the target branch, and how they leave it.

Invariants:
- `git am` runs in the run's own worktree and private git dir, never on the target: the
  branch moves once, with one compare-and-swap `update-ref`, after every landed commit
  was checked against its step commit (same tree, author and message, in order). A
  message that acts as a patch or carries in-body headers changes one of those and is
  refused before the branch moves.
- The target repository sees plumbing only (rev-parse, update-ref, pack files written
  by pack-objects from the private git dir); its config is never what a checkout, a
  status or an am runs with.
- When the branch is checked out somewhere, that working tree and its index follow
  the branch through `read-tree -m -u` run on a private view git dir (target objects as
  alternates, HEAD at the branch's old head): the repository's filters never run.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentos_tasks.errors import EXIT_STATE, EXIT_USAGE, AgentosError
from agentos_tasks.fsutil import RefusedFile, read_regular
from agentos_tasks.git import Git, find_branch_worktree, init_private_repo


@dataclass(frozen=True)
class CheckedOut:
    """The target working tree that has the branch checked out, seen through a private
    git dir whose HEAD is the branch's head at the time the view was made."""

    work_tree: Path
    git: Git

    def require_clean(self) -> None:
        clean, dirty = self.git.is_clean()
        if not clean:
            keys = [w for w in str(dirty).replace(",", " ").split()
                    if w.endswith((".key", ".pem", ".pub"))]
            hint = (f"move {', '.join(keys)} out of the repository (never commit a signing "
                    "key; agentos keygen --out ~/.config/agentos-tasks), then re-run"
                    if keys else "commit or stash them, then re-run; the run's evidence is "
                    "kept")
            raise AgentosError(f"the target working tree {self.work_tree} has uncommitted "
                               f"changes ({dirty}); nothing changed", code=EXIT_STATE,
                               hint=hint)

    def move(self, old: str, new: str) -> None:
        """Bring the index and files from `old` to `new` (a two-tree read-tree merge:
        refuses to overwrite local changes). The index's stat data is refreshed first,
        by content compared under our config, so a merely touched file does not block."""
        self.git.run("update-index", "-q", "--refresh", check=False)
        result = self.git.run("read-tree", "-m", "-u", old, new, check=False)
        if result.returncode == 0:
            return
        message = result.stderr.decode("utf-8", "replace").strip()
        self._undo_partial(old, new)
        if out_of_space(message, self.work_tree):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.work_tree))
        raise AgentosError(f"could not update the checkout {self.work_tree}: {message[:300]}",
                           code=EXIT_STATE, hint="its files are back as they were; the "
                                                 "branch was not moved")

    def _undo_partial(self, old: str, new: str) -> None:
        """A read-tree that failed half-way (a full disk) wrote some of `new`'s files and
        left the index at `old`: remove the files `new` adds, then put `old`'s back (the
        checkout was clean at `old`, require_clean saw to that)."""
        added = self.git.run("diff-tree", "-r", "-z", "--name-only", "--diff-filter=A",
                             "--no-renames", old, new, check=False).stdout
        for raw in filter(None, added.split(b"\0")):
            path = self.work_tree / os.fsdecode(raw)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    path.unlink()
            except OSError:
                continue
        self.git.run("read-tree", "-u", "--reset", old, check=False)


def checked_out(target: Git, branch: str, *, head: str, view_dir: Path,
                extra_objects: tuple[Path, ...]) -> CheckedOut | None:
    """The working tree with `branch` checked out (None when none has: a bare target,
    or another branch is checked out), with a private view on it."""
    work_tree = find_branch_worktree(target, branch)
    if work_tree is None:
        return None
    located = Git(work_tree, target.author)
    index = Path(located.out("rev-parse", "--path-format=absolute", "--git-path", "index"))
    common = located.common_dir()
    init_private_repo(view_dir, fmt_config=common / "config",
                      alternates=[common / "objects", *extra_objects], head=head)
    # the user's own ignore list (data, never a command) keeps an ignored file from
    # making the checkout look dirty
    try:
        exclude = read_regular(common / "info" / "exclude", limit=1 << 20)
    except (OSError, RefusedFile):
        exclude = b""
    (view_dir / "info").mkdir(exist_ok=True)
    (view_dir / "info" / "exclude").write_bytes(exclude)
    return CheckedOut(work_tree, Git(work_tree, target.author, private_dir=view_dir,
                                     work_tree=work_tree, index_file=index))


def commit_identity(git: Git, commits: list[str]) -> dict[str, tuple[str, str, bytes]]:
    """commit -> (tree, author without date, message bytes without trailing newlines),
    from one cat-file --batch."""
    if not commits:
        return {}
    out = git.run("cat-file", "--batch", input="".join(f"{c}\n" for c in commits).encode()
                  ).stdout
    found: dict[str, tuple[str, str, bytes]] = {}
    pos = 0
    for commit in commits:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        size = int(header[2])
        body = out[end + 1:end + 1 + size]
        pos = end + 1 + size + 1
        head, _, message = body.partition(b"\n\n")
        tree = author = ""
        for line in head.split(b"\n"):
            if line.startswith(b"tree "):
                tree = line[5:].decode()
            elif line.startswith(b"author "):
                author = line[7:].decode("utf-8", "replace").rsplit(" ", 2)[0]
        # mailinfo ends every message with one newline; nothing else may differ
        found[commit] = (tree, author, message.rstrip(b"\n"))
    return found


def am_in_private(git: Git, pre: str, patches: list[Path], step_commits: list[str],
                  step_ids: list[str]) -> str:
    """`git am` the patches onto `pre` in the run's own worktree; check every resulting
    commit against its step commit; return the new head. The target is not touched."""
    git_dir = git.git_dir()
    drop_am_state(git_dir)  # an am killed or starved of space earlier left its mailbox
    git.run("reset", "--hard", "-q", pre)
    git.run("clean", "-ffdxq")
    result = git.run("am", "-q", "-k", "--keep-cr", "--no-3way", "--whitespace=nowarn",
                     "--committer-date-is-author-date", "--", *map(str, patches), check=False)
    if result.returncode != 0:
        git.run("am", "--abort", check=False)
        drop_am_state(git_dir)
        message = result.stderr.decode("utf-8", "replace").strip()
        if out_of_space(message, git_dir):
            # not a refusal: the run stays open and the same command retries the apply
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(git_dir))
        raise AgentosError("git am failed: " + message[:300],
                           code=EXIT_STATE, hint="the branch was not touched")
    post = git.rev_parse("HEAD")
    landed = git.commits_between(pre, post)
    if len(landed) != len(step_commits):
        raise AgentosError(f"git am made {len(landed)} commit(s) from {len(step_commits)} "
                           "patch(es); the branch was not touched", code=EXIT_STATE)
    seen = commit_identity(git, [*landed, *step_commits])
    for index, (made, tested) in enumerate(zip(landed, step_commits, strict=True)):
        differs = [name for name, a, b in zip(("tree", "author", "message"), seen[made],
                                               seen[tested], strict=True) if a != b]
        if differs:
            raise AgentosError(
                f"landed commit {index + 1} (step {step_ids[index]}) differs from its tested "
                f"step commit in its {' and '.join(differs)}: the step's message acted as "
                "part of the patch (an embedded diff or in-body header); nothing applied",
                code=EXIT_STATE, hint="a commit message may not contain diff or mail header "
                                      "lines; the branch was not touched")
    return post


def drop_am_state(git_dir: Path) -> None:
    """Remove what an interrupted `git am` leaves in the run's private git dir (its
    mailbox and author script), which would make the next am fail or resume it."""
    for name in ("rebase-apply", "rebase-merge"):
        shutil.rmtree(git_dir / name, ignore_errors=True)


LOW_SPACE = 4 << 20  # below this, a failed write in git is taken for a full disk


def out_of_space(message: str, git_dir: Path) -> bool:
    """Did git fail for lack of space? It says so in many ways (`No space left on
    device`, `unable to write`, `short write`, a truncated file it then cannot parse),
    so a failure while the file system is nearly full counts as one too."""
    if "No space left on device" in message or "Disk quota exceeded" in message:
        return True
    try:
        stat_ = os.statvfs(git_dir)
    except OSError:
        return False
    return stat_.f_bavail * stat_.f_frsize < LOW_SPACE


def refuse_links_in_target(common: Path, git_dir: Path, branch: str) -> None:
    """Everything of the target's git dir that landing writes (the branch's loose ref and
    its parent dirs, the reflogs git appends to, the pack dir, packed-refs) must be what it
    looks like: a directory or a regular file, never a symlink, FIFO or device. git
    follows links there, so a repository could otherwise point a write at any host file."""
    parts = branch.split("/")
    dirs = [common / "refs", common / "refs" / "heads", common / "logs",
            common / "logs" / "refs", common / "logs" / "refs" / "heads",
            common / "objects", common / "objects" / "pack", common / "objects" / "info",
            git_dir / "logs"]
    dirs += [common / "refs" / "heads" / Path(*parts[:i]) for i in range(1, len(parts))]
    dirs += [common / "logs" / "refs" / "heads" / Path(*parts[:i])
             for i in range(1, len(parts))]
    files = [common / "refs" / "heads" / branch, common / "logs" / "refs" / "heads" / branch,
             common / "logs" / "HEAD", git_dir / "logs" / "HEAD", common / "packed-refs",
             common / "HEAD", git_dir / "HEAD"]
    for path, want in [*((d, stat.S_ISDIR) for d in dirs), *((f, stat.S_ISREG) for f in files)]:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not want(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a plain file or directory"
            raise AgentosError(
                f"the target's git dir has {path} as {kind}: landing would write through it",
                code=EXIT_USAGE, where=str(path),
                hint="agentos never writes through links in a repository's git dir; replace "
                     "the link by the file or directory it stands for")


def pack_into(git: Git, objects_dir: Path, tips: list[str], exclude: str) -> None:
    """Copy the objects reachable from `tips` and not from `exclude` into `objects_dir`
    as one pack. pack-objects writes it beside the private git dir (it renames its temp
    file into place, which fails across file systems: outputs/ and the target need not
    share one); the files are then copied into the target, each under a temporary name
    and renamed, the index last, so git sees the pack only once it is whole."""
    revs = "".join(f"{tip}\n" for tip in dict.fromkeys(tips)) + f"^{exclude}\n"
    scratch_root = git.private_dir if git.private_dir is not None else git.cwd
    pack_dir = objects_dir / "pack"
    pack_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agentos-pack-", dir=scratch_root) as scratch:
        git.run("pack-objects", "-q", "--revs", str(Path(scratch) / "pack"),
                input=revs.encode())
        names = sorted(os.listdir(scratch), key=lambda n: (n.endswith(".idx"), n))
        for name in names:  # .pack (and .rev) before .idx
            temp = pack_dir / f".agentos-tmp-{name}"
            shutil.copyfile(Path(scratch) / name, temp)
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(temp, 0o444)
            os.replace(temp, pack_dir / name)


def move_branch(target: Git, branch: str, new: str, old: str, reason: str) -> bool:
    """Compare-and-swap the branch ref (True when it moved from `old` to `new`)."""
    result = target.run("update-ref", "-m", reason, f"refs/heads/{branch}", new, old,
                        check=False)
    return result.returncode == 0
