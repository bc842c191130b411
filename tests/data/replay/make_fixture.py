"""Rebuild the replay fixture (tests/data/replay/) from a local clone of DrTosh/rsyncez.

Not run by the tests. It documents exactly how the fixture was made, and rebuilds it:

    git clone https://github.com/DrTosh/rsyncez /tmp/rsyncez
    python tests/data/replay/make_fixture.py --source /tmp/rsyncez

Why this history: it is small (15 linear commits, no merges) and real, and it has every
property a `patch` step must survive byte-exactly:

* CRLF: "first usable version" (793890c) rewrites json.hpp (18,879 lines), README.md,
  makefile and main.cpp -> rsyncez.cpp (a rename) from LF to CRLF; the two commits after it
  edit CRLF files. Applied without CR preservation (`git am` without --keep-cr) the series
  still applies but the final tree differs: a silent loss the tree hash catches.
* binary: the committed executable (`sync`, later `rsyncez`, mode 100755) is added,
  modified in nine commits, replaced and finally deleted, as `GIT binary patch` hunks.
* size: "json lib included" (b56a177) is a 21,437-line patch (json.hpp, 18,879 lines,
  plus a 462 KB binary hunk); "first usable version" is 45,412 lines.
* renames (main.cpp -> rsyncez.cpp, profile.json -> .rsyncez.json) and trailing
  whitespace that `git apply --whitespace=fix` would "repair" (and so change the tree).

Outputs (next to this script): `base.bundle` (the root commit 87b104d, the base the
patches apply to), `NNNN-*.patch` (`git format-patch --binary` of every later commit), and
`expected.json` (upstream's tree hash after every commit, patch digests, byte checks and
provenance). The fetched content (bundle, patches) is not committed to this repository;
see .gitignore here. The test skips, naming this script, while they are absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

UPSTREAM_REPO = "DrTosh/rsyncez"
UPSTREAM_URL = "https://github.com/DrTosh/rsyncez"
BASE_COMMIT = "87b104da0aeb316c3e9575b634000424b093887d"  # "rsync wrapper" (root commit)
HEAD_COMMIT = "9cd60d34031e790ac5f8b868f16dd2b05865ea60"  # "removed executable"
BUNDLE_NAME = "base.bundle"
BUNDLE_REF = "refs/heads/fixture-base"
# Byte-preserving export: binary hunks, subjects untouched, renames as renames, no
# "-- <git version>" trailer (so the bytes do not depend on the exporting git's version).
FORMAT_PATCH_ARGS = [
    "format-patch", "--binary", "--keep-subject", "--find-renames", "--no-signature",
    "--filename-max-length=48",
]
FIXTURE_DIR = Path(__file__).resolve().parent


def _git(source: Path, *args: str) -> bytes:
    """Run git against `source` with no user/system config, so the export is reproducible."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "LC_ALL": "C"}
    return subprocess.run(["git", "-C", str(source), "-c", "core.hooksPath=/dev/null", *args],
                          check=True, capture_output=True, env=env).stdout


def _text(source: Path, *args: str) -> str:
    return _git(source, *args).decode().strip()


def _blob_is_binary(blob: bytes) -> bool:
    """git's own heuristic: a NUL in the first 8000 bytes."""
    return b"\0" in blob[:8000]


def _changed_blob_checks(source: Path, parent: str, commit: str, step: int
                         ) -> list[dict[str, Any]]:
    """Byte checks for every CRLF text file and binary file a commit adds or modifies."""
    checks: list[dict[str, Any]] = []
    raw = _git(source, "diff-tree", "-r", "-z", "--no-renames", parent, commit)
    fields = raw.split(b"\0")
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta:
            continue
        _old_mode, new_mode, _old_sha, new_sha, _status = meta.decode().lstrip(":").split()
        if set(new_sha) == {"0"} or new_mode == "160000":
            continue  # deleted, or a submodule
        blob = _git(source, "cat-file", "blob", new_sha)
        if _blob_is_binary(blob):
            kind = "binary"
        elif b"\r\n" in blob:
            kind = "crlf"
        else:
            continue
        checks.append({
            "after_step": step, "path": path.decode(), "kind": kind, "mode": new_mode,
            "blob": new_sha, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
            "crlf_count": blob.count(b"\r\n"),
        })
    return checks


def build(source: Path, out_dir: Path) -> dict[str, Any]:
    """Export bundle + patches from `source` into `out_dir` and return expected.json data."""
    commits = _text(source, "rev-list", "--reverse", "--topo-order",
                    f"{BASE_COMMIT}..{HEAD_COMMIT}").split()
    parent = BASE_COMMIT
    for commit in commits:  # the series must be a straight line, or replay means nothing
        parents = _text(source, "rev-list", "--parents", "-n1", commit).split()[1:]
        if parents != [parent]:
            sys.exit(f"{commit} has parents {parents}, expected [{parent}]: not linear")
        parent = commit

    for old in out_dir.glob("[0-9][0-9][0-9][0-9]-*.patch"):
        old.unlink()
    _git(source, *FORMAT_PATCH_ARGS, "-o", str(out_dir), f"{BASE_COMMIT}..{HEAD_COMMIT}")
    patch_files = sorted(out_dir.glob("[0-9][0-9][0-9][0-9]-*.patch"))
    if len(patch_files) != len(commits):
        sys.exit(f"format-patch wrote {len(patch_files)} patches for {len(commits)} commits")

    # A bundle holding just the base commit: `git fetch base.bundle fixture-base` then
    # gives a repository whose HEAD is upstream's base commit, tree hash and all.
    with tempfile.TemporaryDirectory() as scratch:
        scratch_repo = Path(scratch) / "base.git"
        subprocess.run(["git", "init", "-q", "--bare", str(scratch_repo)], check=True)
        _git(scratch_repo, "fetch", "-q", "--no-tags", str(source.resolve()),
             f"{BASE_COMMIT}:{BUNDLE_REF}")
        bundle = out_dir / BUNDLE_NAME
        bundle.unlink(missing_ok=True)
        _git(scratch_repo, "bundle", "create", str(bundle), BUNDLE_REF)

    steps: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    parent = BASE_COMMIT
    for number, (commit, patch_file) in enumerate(zip(commits, patch_files, strict=True), 1):
        data = patch_file.read_bytes()
        steps.append({
            "step": number, "file": patch_file.name, "commit": commit, "parent": parent,
            "tree": _text(source, "rev-parse", f"{commit}^{{tree}}"),
            "subject": _text(source, "log", "-1", "--format=%s", commit),
            "author": _text(source, "log", "-1", "--format=%an <%ae>", commit),
            "patch_sha256": hashlib.sha256(data).hexdigest(), "patch_bytes": len(data),
            "patch_lines": data.count(b"\n"), "patch_has_cr": b"\r" in data,
        })
        checks.extend(_changed_blob_checks(source, parent, commit, number))
        parent = commit

    return {
        "schema": 1,
        "source": {
            "repo": UPSTREAM_REPO, "url": UPSTREAM_URL, "license": "MIT (LICENSE.MIT)",
            "base_commit": BASE_COMMIT, "head_commit": HEAD_COMMIT,
        },
        "export": {
            "command": ["git", *FORMAT_PATCH_ARGS, "-o", "DIR", f"{BASE_COMMIT}..{HEAD_COMMIT}"],
            "git_version": _text(source, "version"),
            "rebuild": "python tests/data/replay/make_fixture.py --source <clone of "
                       f"{UPSTREAM_URL}>",
        },
        "base": {
            "bundle": BUNDLE_NAME, "ref": BUNDLE_REF, "commit": BASE_COMMIT,
            "tree": _text(source, "rev-parse", f"{BASE_COMMIT}^{{tree}}"),
            "bundle_sha256": hashlib.sha256((out_dir / BUNDLE_NAME).read_bytes()).hexdigest(),
        },
        "steps": steps,
        "final_tree": _text(source, "rev-parse", f"{HEAD_COMMIT}^{{tree}}"),
        "checks": checks,
    }


def main() -> None:
    """Command line: --source CLONE [--out DIR]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help=f"local clone (bare or not) of {UPSTREAM_URL}")
    parser.add_argument("--out", type=Path, default=FIXTURE_DIR)
    args = parser.parse_args()
    expected = build(args.source, args.out)
    (args.out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{len(expected['steps'])} patches, base tree {expected['base']['tree']}, "
          f"final tree {expected['final_tree']}, {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
