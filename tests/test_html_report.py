"""reports/report.html: the reviewer's page, built from the evidence alone, safe to open.

Two real runs are built once per module: the demo (requests/demo.yaml, six writes, gates
PASS) and a failed run whose artifacts are hostile (a step message with `<script>` and a
bidi override, a file name with `</style>`, a long diff, a run step that prints 60 lines
and exits 3). A fake-claude tool run checks the prompt, claims and network ledger. The
browser test opens both pages once in headless Chromium (Debian's `chromium`): the key
elements are in the rendered DOM, no console message (CSP violations are logged there),
no script element, no request in Chromium's net log but its own background ones (a control
page shows both detectors fire), and a 1280x800 screenshot is saved (tmp dir and
outputs/report-screenshot*.png)."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PERMISSIVE_POLICY, PROJECT, doit

from agentos_tasks.attest.keys import keygen, load_signer
from agentos_tasks.attest.statement import sign_run
from agentos_tasks.attest.verify import verify_run
from agentos_tasks.html_report import CSP, HTML_RELPATH, UNSIGNED, Signing, render_html
from agentos_tasks.layout import SUBJECT_GLOBS
from agentos_tasks.report import write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

LONG_FILE = "".join(f"line {i} of a long file\n" for i in range(150))

FAILED_REQUEST = {
    "version": 1, "id": "failed-run", "repo": "./repo", "init_repo": True, "branch": "main",
    "policy": "./policy.yaml",
    "steps": [
        {"id": "w1", "message": "w1: <script>alert(1)</script> \u202e evil",
         "write": {"path": "src/</style><b>x.py", "content": "print('<script>')\n"}},
        {"id": "long", "message": "long: a long file",
         "write": {"path": "docs/long.txt", "content": LONG_FILE}},
        {"id": "check", "message": "check: run the tests",
         "run": ["python", "-c",
                 "import sys\nfor i in range(60): print('out', i)\nsys.exit(3)"]},
    ],
}


@dataclass
class Run:
    run_dir: Path
    root: Path


def _build(root: Path, request: Path, outputs: Path, run_id: str, *, ok: bool) -> Run:
    run = doit(root, "run", request, outputs)
    assert (run.returncode == 0) == ok, run.stdout + run.stderr
    gates = doit(root, "gates", request, outputs)
    assert gates.returncode == 0, gates.stdout + gates.stderr
    return Run(outputs / run_id, root)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("demo")
    (root / "requests").mkdir()
    request = root / "requests" / "demo.yaml"
    shutil.copy(PROJECT / "requests" / "demo.yaml", request)
    return _build(root, request, root / "outputs", "demo-six-files", ok=True)


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("failed")
    (root / "policy.yaml").write_text(PERMISSIVE_POLICY)
    request = root / "request.yaml"
    request.write_text(json.dumps(FAILED_REQUEST))  # JSON is YAML
    return _build(root, request, root / "outputs", "failed-run", ok=False)


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One fake-claude step that edits src/app.py (the fake CLIs of tests/fakes)."""
    import runutil
    import test_tool_steps

    root = tmp_path_factory.mktemp("tool")
    proc = test_tool_steps.tool_run(root, test_tool_steps.agent(
        "claude", "edit:path=src/app.py:content=hello"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    gates = runutil.doit(root, "gates", "request=req.yaml")
    assert gates.returncode == 0, gates.stdout + gates.stderr
    return Run(root / "out" / "r1", root)


def _copy(run: Run, tmp: Path) -> Path:
    """A private copy of a run directory (tests may damage it)."""
    target = tmp / run.run_dir.name
    shutil.copytree(run.run_dir, target, symlinks=True,
                    ignore=shutil.ignore_patterns("worktree", ".state"))
    return target


def _page(run_dir: Path) -> str:
    return (run_dir / HTML_RELPATH).read_text(encoding="utf-8")


# ------------------------------------------------------------------ the file itself


def test_gates_write_the_page_and_it_is_a_signed_subject(demo: Run) -> None:
    page = _page(demo.run_dir)
    assert page == render_html(demo.run_dir)
    assert "reports/report.html" in SUBJECT_GLOBS
    assert page.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert CSP == "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def test_no_scripts_and_no_external_urls(demo: Run, failed: Run, tool: Run) -> None:
    for run in (demo, failed, tool):
        page = _page(run.run_dir)
        assert not re.search(r"<script", page, re.IGNORECASE), run.run_dir
        assert not re.search(r"<(link|img|iframe|object|embed|base)\b", page, re.I)
        assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
        assert not re.search(r"url\(", page, re.I)  # no CSS loads either
        hrefs = re.findall(r'href="([^"]*)"', page)
        assert hrefs and all(h.startswith("#step-") for h in hrefs), hrefs


def test_same_evidence_same_bytes_anywhere(demo: Run, tmp_path: Path) -> None:
    """No clock, no environment, no location: a copy elsewhere renders identically."""
    copy = _copy(demo, tmp_path)
    os.utime(copy / "execution_result.json", (0, 0))
    assert render_html(copy) == render_html(demo.run_dir) == _page(demo.run_dir)


def test_demo_summary_timeline_and_steps(demo: Run) -> None:
    page = _page(demo.run_dir)
    result = json.loads((demo.run_dir / "execution_result.json").read_text())
    gates = json.loads((demo.run_dir / "reports/gates.json").read_text())["summary"]
    assert '<div class="verdict v-PASS" id="verdict">gates: PASS</div>' in page
    assert (f'<b id="gate-counts">{gates["PASS"]} PASS · 0 FAIL · '
            f'{gates["NOT_APPLICABLE"]} NOT_APPLICABLE</b>') in page
    assert '<b id="exec-status">applied</b>' in page
    assert result["repo"] in page
    pre, post = result["pre_apply_head"], result["post_apply_head"]
    assert (f"6 commit(s): <code title=\"{pre}\">{pre[:12]}</code> .. "
            f"<code title=\"{post}\">{post[:12]}</code>") in page
    assert f"<td>signature</td><td>{UNSIGNED}</td>" in page
    for index, step in enumerate(result["steps"]):
        manifest = json.loads((demo.run_dir / f"steps/{step['id']}.json").read_text())
        assert f'<a href="#step-{index}">{step["id"]}</a>' in page
        section = page.split(f'<section class="step" id="step-{index}">')[1].split("</section>")[0]
        path = step["files"][0]["path"]
        # the path, its change, the decision and the rule id that allowed that very path
        # (the default policy's named rule: docs/**, src/**, tests/**), and the tape agrees
        rule = {"docs": "docs", "src": "src", "tests": "tests"}[path.split("/")[0]]
        assert manifest["policy_check"]["rule_id"] == "allow"  # the step's overall verdict
        assert (f"<tr><td>{path}</td><td>A</td><td><span class=\"s-allow\">allow</span></td>"
                f"<td>{rule}</td><td>yes</td></tr>") in section
        assert f"diff: patches/{step['id']}.patch" in section
        assert "<details class=\"diff\" open>" in section  # short diffs start open
    # a pygments-highlighted diff: inline styles, no classes to look up
    assert re.search(r'<span style="color: #[0-9A-Fa-f]{6}">\+# Demo project</span>', page)


def test_gates_table_and_collapsed_digests(demo: Run) -> None:
    page = _page(demo.run_dir)
    gates = json.loads((demo.run_dir / "reports/gates.json").read_text())["gates"]
    table = page.split('<section id="gates">')[1].split("</section>")[0]
    assert table.count("<tr>") == len(gates) + 1
    r2 = next(g for g in gates if g["id"] == "R2")
    assert "<td>R2</td><td><span class=\"s-PASS\">PASS</span></td>" in table
    assert r2["reason"] in table
    digests = page.split('<section id="digests">')[1]
    assert digests.startswith("<h2>Digests</h2>\n<details><summary>")  # collapsed
    sha = hashlib.sha256((demo.run_dir / "patches/step_01.patch").read_bytes()).hexdigest()
    assert f"<td><code>patches/step_01.patch</code></td><td><code>{sha}</code></td>" in digests
    # everywhere before the digests, a digest is shown by 12 characters
    assert sha not in page.split('<section id="digests">')[0].replace(f'title="{sha}"', "")


def test_failed_run_shows_the_failure_the_command_and_the_log_tail(failed: Run) -> None:
    page = _page(failed.run_dir)
    assert '<div class="badge r-other" id="run-status">run: failed</div>' in page
    assert '<b id="exec-status">failed</b>' in page
    section = page.split('<section class="step" id="step-2">')[1].split("</section>")[0]
    assert '<span class="s-failed">failed</span>' in section
    assert "exited 3 (expected 0)" in section
    assert '<td>expected exit</td><td>0</td>' in section
    assert "[&quot;python&quot;, &quot;-c&quot;, &quot;import sys\\nfor i in range(60)" in section
    assert "log: logs/check.out (last 40 of 60 lines)" in section
    assert "out 59" in section and "out 20\n" in section and "out 19\n" not in section
    assert "Diff: none (failed)" in section
    assert "nothing landed" in page


def test_long_diffs_start_collapsed(failed: Run) -> None:
    page = _page(failed.run_dir)
    section = page.split('<section class="step" id="step-1">')[1].split("</section>")[0]
    assert '<details class="diff"><summary>diff: patches/long.patch (' in section
    assert "line 149 of a long file" in section  # collapsed, not cut


def test_hostile_values_are_escaped(failed: Run) -> None:
    page = _page(failed.run_dir)
    assert "<script" not in page.lower() and "\u202e" not in page
    assert "w1: &lt;script&gt;alert(1)&lt;/script&gt; \\u202e evil" in page
    assert "</style><b>" not in page
    assert page.count("</style>") == 1  # only the page's own stylesheet ends
    assert "src/&lt;/style&gt;&lt;b&gt;x.py" in page
    # inside the highlighted diff: escaped (pygments versions differ in how they write the
    # quote), shown as the text once tags are stripped
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "print('<script>')" in text


def test_hostile_ledger_and_tool_claims_are_escaped(tool: Run, tmp_path: Path) -> None:
    run_dir = _copy(tool, tmp_path)
    pack_path = run_dir / "tools/t1/tool_result_pack.json"
    pack = json.loads(pack_path.read_text())
    pack["claims"]["result"] = "done </pre><script>x()</script>\u2066"
    pack_path.write_text(json.dumps(pack))
    (run_dir / "network").mkdir()
    (run_dir / "network/t1.jsonl").write_text(
        json.dumps({"seq": 0, "host": "<img src=https://evil/x>", "port": 443,
                    "address": "203.0.113.9", "decision": "deny", "rule": "no-rule",
                    "bytes_up": 0, "bytes_down": 0, "duration_ms": 3}) + "\n{not json\n")
    page = render_html(run_dir)
    assert "<script" not in page and "<img" not in page and "\u2066" not in page
    assert "done &lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;\\u2066" in page
    assert ("<td>&lt;img src=https://evil/x&gt;:443</td><td>203.0.113.9</td>"
            '<td><span class="s-deny">deny</span></td><td>no-rule</td>') in page
    assert "UNREADABLE (line 2 is not JSON)" in page


def test_tool_step_prompt_claims_and_usage(tool: Run) -> None:
    page = _page(tool.run_dir)
    pack = json.loads((tool.run_dir / "tools/t1/tool_result_pack.json").read_text())
    usage = pack["claims"]["usage_summary"]
    section = page.split('<section class="step" id="step-0">')[1].split("</section>")[0]
    assert ('<pre class="prompt">Please do it. MODE=edit:path=src/app.py:content=hello</pre>'
            in section)
    assert f"<td>model</td><td>{usage['model']}</td>" in section
    assert (f"<td>tokens in / out</td><td>{usage['input_tokens']} / "
            f"{usage['output_tokens']}</td>") in section
    assert f"<td>cost USD</td><td>{usage['cost_usd']}</td>" in section
    assert f"<td>turns</td><td>{usage['turns']}</td>" in section
    assert "<td>claimed result</td><td>Updated src/app.py.</td>" in section
    assert "<td>src/app.py</td><td>A</td><td><span class=\"s-allow\">allow</span></td>" in section
    assert "Network: none granted (no ledger)." in section
    assert "log: logs/t1.out" in section


def test_denied_run_names_the_rule_that_denied_the_path(denied_run: Any) -> None:
    """conftest's denied run: docs/** denied by rule no-docs before anything ran."""
    page = render_html(denied_run.run_dir)
    assert '<b id="exec-status">denied</b>' in page
    assert ("<tr><td>failure</td><td>step d2: docs/no.md matches deny glob &#x27;docs/**&#x27; "
            "(rule no-docs)</td></tr>") in page
    section = page.split('<section class="step" id="step-1">')[1].split("</section>")[0]
    assert ('<tr><td>docs/no.md</td><td></td><td><span class="s-deny">deny</span></td>'
            "<td>no-docs</td><td>step_failed</td></tr>") in section
    timeline = page.split('<section id="timeline">')[1].split("</section>")[0]
    assert '<span class="s-pending">pending</span></td><td>not run</td>' in timeline


def test_re_rendering_a_signed_run_keeps_its_signature_valid(demo: Run,
                                                             tmp_path: Path) -> None:
    """sign_run renders the page before the envelope exists; `doit gates` re-renders it
    afterwards. Whether or not sign_run named the signer, verify still passes."""
    run_dir = _copy(demo, tmp_path)
    private, public = keygen(tmp_path / "keys")
    sign_run(run_dir, private)
    signed = (run_dir / HTML_RELPATH).read_bytes()
    write_report(run_dir)  # what `doit gates` does
    assert (run_dir / HTML_RELPATH).read_bytes() == signed
    checks = verify_run(run_dir, public)
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]


def test_missing_evidence_is_shown_as_missing(failed: Run, tmp_path: Path) -> None:
    run_dir = _copy(failed, tmp_path)
    (run_dir / "logs/check.out").unlink()
    (run_dir / "patches/w1.patch").unlink()
    (run_dir / "steps/long.json").unlink()
    (run_dir / "reports/gates.json").unlink()
    page = render_html(run_dir)
    assert '<div class="verdict v-MISSING" id="verdict">gates: MISSING</div>' in page
    assert "Log: MISSING (logs/check.out)" in page
    assert "Diff: MISSING (patches/w1.patch)" in page
    assert "MISSING (steps/long.json)" in page
    assert '<section id="gates"><h2>Gates</h2><p class="missing">MISSING (reports/gates.json)' in page
    (run_dir / "execution_result.json").unlink()
    page = render_html(run_dir)
    assert '<p class="missing">MISSING (execution_result.json)</p>' in page
    assert "3. check" in page  # steps still listed, from audit/request.json


def test_a_step_id_that_leaves_the_run_dir_is_never_read(failed: Run, tmp_path: Path) -> None:
    run_dir = _copy(failed, tmp_path)
    (tmp_path / "secret.out").write_text("TOP SECRET\n")
    request = json.loads((run_dir / "audit/request.json").read_text())
    request["steps"][2]["id"] = "../../secret"
    (run_dir / "audit/request.json").write_text(json.dumps(request))
    page = render_html(run_dir)
    assert "TOP SECRET" not in page
    assert "logs/../../secret.out: not a path inside the run directory" in page


def test_signed_page_names_its_signer_and_re_renders_identically(
        demo: Run, tmp_path: Path) -> None:
    """sign_run tells write_report who signs, so the signed page names its signer and
    re-renders to the same bytes."""
    run_dir = _copy(demo, tmp_path)
    private, public = keygen(tmp_path / "keys")
    keyid = load_signer(private).public_key.keyid
    assert "not recorded (the statement carries no signing time)" in \
        render_html(run_dir, signing=Signing(keyid=keyid))
    sign_run(run_dir, private)
    signed_at = json.loads((run_dir / "signature/statement.json").read_text())[
        "predicate"]["signed_at"]
    # what sign_run rendered when told who signs and when, before the signature existed ...
    before = (run_dir / HTML_RELPATH).read_text()
    assert f"<td>signer key id</td><td>{keyid}</td>" in before
    assert f"<td>signed at</td><td>{signed_at}</td>" in before  # the statement's own time
    checks = verify_run(run_dir, public)
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]
    # ... is what the evidence renders once signature/ exists: a fixed point
    assert render_html(run_dir) == before
    write_report(run_dir)  # `doit gates` after signing
    assert all(check.ok for check in verify_run(run_dir, public))
    statement = json.loads((run_dir / "signature/statement.json").read_text())
    statement["predicate"]["signed_at"] = "2026-12-01T10:00:00Z"
    statement["subject"] = [s for s in statement["subject"] if s["name"] != HTML_RELPATH]
    (run_dir / "signature/statement.json").write_text(json.dumps(statement))
    assert "<td>signed at</td><td>2026-12-01T10:00:00Z</td>" in render_html(run_dir)


# ------------------------------------------------------------------ in a real browser


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False)


# Chromium's own background requests (time sync, account probes, the component updater
# of a freshly installed chromium) that it makes for any page, even about:blank, whatever
# --disable-background-networking and --disable-component-update say. The report names
# none of these hosts; the control page proves that a page's own load is seen.
_BROWSER_HOSTS = re.compile(
    r"^https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gstatic\.com|gvt1\.com)/")


def _page_requests(netlog: Path) -> list[str]:
    """http(s) URLs in a Chromium net log, minus the browser's own background requests."""
    urls = set(re.findall(r'"url":"(https?://[^"]*)"', netlog.read_text(errors="replace")))
    return sorted(u for u in urls if not _BROWSER_HOSTS.match(u))


def _control_page(tmp_path: Path) -> None:
    """The detectors detect: a page without our CSP that loads an image and runs a script
    shows up in the net log and as CONSOLE lines."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.log("control")</script></body></html>')
    netlog = tmp_path / "net-control.json"
    probe = _chromium(f"--log-net-log={netlog}", "--dump-dom", page.as_uri(),
                      profile=tmp_path / "profile-control")
    assert "http://127.0.0.1:9/x.png" in _page_requests(netlog), probe.stderr[-2000:]
    assert "CONSOLE" in probe.stderr and "control" in probe.stderr


def test_pages_render_in_headless_chromium(demo: Run, failed: Run, tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"chromium is missing ({CHROMIUM}); .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _control_page(tmp_path)
    outputs = PROJECT / "outputs"
    for name, run in (("demo", demo), ("failed", failed)):
        url = (run.run_dir / HTML_RELPATH).as_uri()
        netlog = tmp_path / f"net-{name}.json"
        dom = _chromium(f"--log-net-log={netlog}", "--dump-dom", url,
                        profile=tmp_path / f"profile-{name}")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert _page_requests(netlog) == [], (name, _page_requests(netlog))
        html = dom.stdout
        for element in ('id="verdict"', 'id="run-status"', 'id="gate-counts"',
                        'id="exec-status"', 'id="timeline"', 'id="steps"', 'id="gates"',
                        'id="digests"', 'class="step" id="step-0"', "<details"):
            assert element in html, (name, element)
        assert "<script" not in html.lower()  # nothing hostile became an element
        # console messages (CSP violations, blocked loads) are logged as CONSOLE lines
        logged = dom.stderr
        assert "CONSOLE" not in logged and "Refused to" not in logged, logged[-2000:]
        shot = tmp_path / f"report-{name}.png"
        taken = _chromium(f"--screenshot={shot}", "--window-size=1280,800", url,
                          profile=tmp_path / f"profile-shot-{name}")
        assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "CONSOLE" not in taken.stderr, taken.stderr[-2000:]
        outputs.mkdir(exist_ok=True)
        suffix = "" if name == "demo" else f"-{name}"
        shutil.copy(shot, outputs / f"report-screenshot{suffix}.png")
