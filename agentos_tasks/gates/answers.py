"""A1, A2, A3: a request's questions stopped the run until they were answered, with evidence.

The questions come from audit/request.json, which must ask what audit/request.yaml asks;
the answers from audit/answers.yaml, re-validated here with the executor's own schema;
the order of events from the tape. NOT_APPLICABLE only when there is nothing to check:
no question in either request record, no questions_blocked/resume_applied on the tape
and no audit/answers.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos_tasks.gates.common import (
    NA,
    PASS,
    Fail,
    Gate,
    Verdict,
    require_chain,
    status_of,
    verdict,
)

if TYPE_CHECKING:
    from agentos_tasks.gates.context import GateContext


def request_yaml_questions(ctx: GateContext) -> list[str]:
    """Question ids as the recorded request file itself (audit/request.yaml) asks them;
    parsed once per content digest (A1-A3 all ask)."""
    raw = ctx.request_yaml().get("questions")
    if raw is not None and (not isinstance(raw, list)
                            or not all(isinstance(q, dict) for q in raw)):
        raise Fail("audit/request.yaml: questions is not a list of {id, text}")
    return [str(q.get("id")) for q in raw or []]


def questions(ctx: GateContext) -> list[str]:
    """The questions the request asks: audit/request.json's, which must be request.yaml's
    (a forger who empties one of them must not turn A1-A3 into NOT_APPLICABLE)."""
    raw = ctx.request_record.get("questions") or []
    recorded = [str(q["id"]) for q in raw]
    asked = request_yaml_questions(ctx)
    if recorded != asked:
        raise Fail(f"audit/request.yaml asks {asked}, audit/request.json records {recorded}")
    return recorded


def recorded_answers(ctx: GateContext) -> dict[str, dict[str, Any]] | None:
    """audit/answers.yaml's answers, validated as the executor validates them (None: absent)."""
    data = ctx.answers_file()
    return None if data is None else dict(data.get("answers", {}))


def positions(ctx: GateContext, name: str) -> list[int]:
    return [i for i, e in enumerate(ctx.events) if e.get("event") == name]


def settled_before_checking(ctx: GateContext) -> Verdict | None:
    """What A1-A3 all decide first: NOT_APPLICABLE when nothing about questions exists,
    the verdict for a run without questions, else None once the tape is known good."""
    if nothing_asked(ctx):
        return NA, "the request asks no questions"
    settled = no_questions(ctx)
    if settled is not None:
        return settled
    require_chain(ctx)
    return None


def nothing_asked(ctx: GateContext) -> bool:
    """True only when nothing about questions exists to check: no question in request.yaml
    or request.json, no questions_blocked/resume_applied on the tape, no answers file."""
    return not questions(ctx) and not positions(ctx, "questions_blocked") and \
        not positions(ctx, "resume_applied") and not ctx.exists("audit/answers.yaml")


def no_questions(ctx: GateContext) -> Verdict | None:
    """The verdict for a request without questions that still left question evidence
    (an answers file holding approvals only is normal; anything else contradicts it)."""
    if questions(ctx):
        return None
    require_chain(ctx)
    for name in ("questions_blocked", "resume_applied"):
        if positions(ctx, name):
            raise Fail(f"the request asks no questions, yet the tape has {name}")
    if status_of(ctx) == "blocked":
        raise Fail("the request asks no questions, yet execution_result says blocked")
    answers = recorded_answers(ctx)
    if answers:
        raise Fail(f"the request asks no questions, yet audit/answers.yaml answers "
                   f"{sorted(answers)}")
    return PASS, "the request asks no questions; audit/answers.yaml holds approvals only " \
                 "(EX-G/TL-F check them)"


# ------------------------------------------------------------------ A1


@verdict
def a1_blocked(ctx: GateContext) -> Verdict:
    """No step started while a question was unanswered: every step_start follows a
    resume_applied that answered every question, a questions_blocked is followed by no
    step_start before the next resume_applied, and a blocked run started no step."""
    settled = settled_before_checking(ctx)
    if settled is not None:
        return settled
    asked = questions(ctx)
    starts = positions(ctx, "step_start")
    resumes = positions(ctx, "resume_applied")
    blocks = positions(ctx, "questions_blocked")
    status = status_of(ctx)
    for block in blocks:
        event = ctx.events[block]
        if not event.get("missing"):
            raise Fail(f"questions_blocked (seq {block}) names no missing question")
        if not set(event["missing"]) <= set(asked):
            raise Fail(f"questions_blocked names questions the request lacks: {event['missing']}")
        next_resume = min([r for r in resumes if r > block], default=len(ctx.events))
        ran = [s for s in starts if block < s < next_resume]
        if ran:
            raise Fail(f"step {ctx.events[ran[0]].get('step')} started after questions_blocked "
                       "without a resume_applied")
    if starts:
        before = [r for r in resumes if r < starts[0]]
        if not before:
            raise Fail(f"step {ctx.events[starts[0]].get('step')} started before any "
                       f"resume_applied, with {len(asked)} question(s) unanswered")
        answered = set(ctx.events[before[-1]].get("answered") or [])
        if not set(asked) <= answered:
            raise Fail(f"steps started with question(s) {sorted(set(asked) - answered)} "
                       "unanswered")
    if status == "blocked":
        if not blocks:
            raise Fail("execution_result says blocked, the tape has no questions_blocked")
        if blocks[-1] < max(starts + resumes, default=-1):
            raise Fail("execution_result says blocked, but the run resumed after the block")
        answers = recorded_answers(ctx)
        still = [q for q in asked if answers is None or q not in answers]
        if not still:
            raise Fail("run blocked although audit/answers.yaml answers every question")
        if ctx.result.get("commits_applied") or ctx.events_named("patches_applied"):
            raise Fail("blocked run, yet patches were applied")
        return PASS, f"blocked on {len(still)} unanswered question(s); no step started"
    if not starts:
        return PASS, f"{len(asked)} question(s); no step started"
    return PASS, f"no step started before all {len(asked)} question(s) were answered " \
                 f"({len(blocks)} block(s) recorded)"


# ------------------------------------------------------------------ A2


@verdict
def a2_resumed(ctx: GateContext) -> Verdict:
    """With an answers file, the run recorded resume_applied (binding the file's sha256)
    and then executed: steps started only after it."""
    settled = settled_before_checking(ctx)
    if settled is not None:
        return settled
    status = status_of(ctx)
    resumes = positions(ctx, "resume_applied")
    starts = positions(ctx, "step_start")
    has_answers = ctx.exists("audit/answers.yaml")
    if not has_answers and not resumes and not starts and status == "blocked":
        return NA, "run still blocked: no answers file was given"
    if not has_answers:
        raise Fail("the run went on past its questions, but audit/answers.yaml is missing")
    if not resumes:
        raise Fail("audit/answers.yaml exists but the tape has no resume_applied")
    digest = ctx.sha256("audit/answers.yaml")
    if ctx.events[resumes[-1]].get("answers_sha256") != digest:
        raise Fail("audit/answers.yaml differs from the answers_sha256 on the last "
                   "resume_applied")
    if status == "blocked" and resumes[-1] > max(positions(ctx, "questions_blocked"),
                                                 default=-1):
        raise Fail("resume_applied is the latest word, yet execution_result says blocked")
    after = [s for s in starts if s > resumes[0]]
    if not after:
        if status in ("applied",):
            raise Fail("run applied, but no step started after resume_applied")
        raise Fail(f"run resumed (resume_applied) but never executed a step (status {status})")
    early = [s for s in starts if s < resumes[0]]
    if early:
        raise Fail(f"step {ctx.events[early[0]].get('step')} started before resume_applied")
    return PASS, f"resumed with answers {str(digest)[:12]}, then {len(after)} step(s) started"


# ------------------------------------------------------------------ A3


@verdict
def a3_evidence(ctx: GateContext) -> Verdict:
    """Every question has an answer in audit/answers.yaml with who (by), when (at) and
    what (text), equal to the answers the last resume_applied recorded."""
    settled = settled_before_checking(ctx)
    if settled is not None:
        return settled
    asked = questions(ctx)
    status = status_of(ctx)
    answers = recorded_answers(ctx)
    starts = ctx.events_named("step_start")
    if answers is None:
        if status == "blocked" and not starts and not ctx.events_named("resume_applied"):
            return NA, "run still blocked: no answers recorded (A1 checks the stop)"
        raise Fail("the run went on past its questions, but audit/answers.yaml is missing")
    missing = [q for q in asked if q not in answers]
    if missing:
        if status == "blocked" and not starts:
            return NA, f"run blocked on {missing}: the answers are incomplete"
        raise Fail(f"question(s) {missing} have no answer in audit/answers.yaml")
    unknown = sorted(set(answers) - set(asked))
    if unknown:
        raise Fail(f"audit/answers.yaml answers unknown question(s) {unknown}")
    for qid in asked:
        entry = answers[qid]
        if not all(str(entry.get(k, "")).strip() for k in ("by", "at", "text")):
            raise Fail(f"answer to {qid} lacks by/at/text")
    resumes = ctx.events_named("resume_applied")
    if not resumes:
        raise Fail("answers recorded but the tape has no resume_applied")
    on_tape = resumes[-1].get("answers") or {}
    if on_tape != {q: answers[q] for q in sorted(answers)}:
        raise Fail("answers on the tape's resume_applied differ from audit/answers.yaml")
    names = ", ".join(sorted({str(answers[q]["by"]) for q in asked}))
    return PASS, f"{len(asked)} question(s) answered by {names}, matching resume_applied"


# A1-A3 read the request records, the answers file and the tape
INPUTS: tuple[str, ...] = ("audit/*", "execution_result.json")
A1 = Gate("A1", "with unanswered questions no step executed (questions_blocked)",
          a1_blocked, INPUTS)
A2 = Gate("A2", "with an answers file the run resumed and then executed", a2_resumed,
          INPUTS)
A3 = Gate("A3", "every question has an answer with who, when and text", a3_evidence,
          INPUTS)
