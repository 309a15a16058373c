"""Interactive tools: forms asked on stdout, answered on stdin (Code Ally's form protocol).

The tool here asks the forms its input describes and answers with every form response it
read, so each test sees exactly what the tool got. Real processes throughout: the API's
``on_form`` callback, and ``ally run`` with ``--form-response`` or without a terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import pytest

from ally_core import Host, ToolError
from ally_core.forms import FormRequest

# Reads its input as one line; for each form of the input prints text before it, the request
# (in one write, or in two with a pause between), text after it; reads one answer line.
ASKER = """\
import json, sys, time
args = json.loads(sys.stdin.readline())
answers = []
for form in args.get("forms", []):
    request = {"__ally_form_request": True, "schema": form["schema"]}
    if "initialValues" in form:
        request["initialValues"] = form["initialValues"]
    if form.get("marker_last"):
        request = {"schema": form["schema"], "__ally_form_request": True}
    text = json.dumps(request)
    sys.stdout.write(form.get("before", ""))
    if form.get("split"):
        sys.stdout.write(text[:25])
        sys.stdout.flush()
        time.sleep(0.3)
        text = text[25:]
    sys.stdout.write(text + form.get("after", "\\n"))
    sys.stdout.flush()
    line = sys.stdin.readline()
    answers.append(json.loads(line) if line else None)
    time.sleep(form.get("sleep_after", 0))
print(json.dumps({"success": True, "answers": answers}))
"""

SCHEMA: dict[str, Any] = {
    "title": "Details",
    "description": "A few questions",
    "fields": [
        {"name": "name", "type": "string", "label": "Name", "required": True},
        {
            "name": "n",
            "type": "number",
            "label": "How many",
            "default": 1,
            "validation": {"min": 0, "max": 10},
        },
        {
            "name": "color",
            "type": "choice",
            "label": "Colour",
            "choices": [{"value": "red", "label": "Red"}, "green"],
            "default": "red",
        },
        {"name": "flag", "type": "boolean", "label": "Flag", "default": False},
    ],
}


def _asker(make_plugin: Callable[..., Path], *, interactive: bool = True) -> None:
    tool: dict[str, Any] = {"name": "ask", "command": "python3", "args": ["ask.py"]}
    if interactive:
        tool["interactive"] = True
    make_plugin("forms", {"runtime": "python3", "tools": [tool]}, files={"ask.py": ASKER})


def _tool(host: Host) -> Any:
    (outcome,) = host.load(["forms"])
    assert outcome.ready, outcome.reason
    return outcome.tool("ask")


def _form(**extra: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, **extra}


def _ok(values: Mapping[str, Any]) -> dict[str, Any]:
    return {"__ally_form_response": True, "success": True, "data": dict(values)}


CANCELLED = {"__ally_form_response": True, "success": False, "cancelled": True}
GOOD = {"name": "Ada", "n": 3, "color": "green", "flag": True}


def test_one_form_is_asked_through_the_callback_and_answered_on_stdin(
    host: Host, make_plugin: Any
) -> None:
    _asker(make_plugin)
    asked: list[FormRequest] = []

    def on_form(request: FormRequest) -> Mapping[str, Any]:
        asked.append(request)
        return GOOD

    result = _tool(host).call(
        {"forms": [_form(initialValues={"name": "Grace"})]}, timeout=30, on_form=on_form
    )
    (request,) = asked
    assert (request.plugin, request.tool) == ("forms", "ask")
    assert request.title == "Details" and request.description == "A few questions"
    assert request.schema == SCHEMA
    assert request.fields == SCHEMA["fields"]
    assert request.initial_values == {"name": "Grace"}
    assert result.success, result.error
    # The tool got exactly Code Ally's response line; the request is not part of the reply.
    assert result.reply == {"success": True, "answers": [_ok(GOOD)]}


@pytest.mark.parametrize(
    "form",
    [
        _form(before="step 1 of 2\nloading "),  # after earlier lines, and on the same line
        _form(before="progress: ", after=" trailing words\n"),
        _form(marker_last=True),  # the marker is not the first key
        _form(split=True, after=""),  # arrives in two pieces; no newline after it
    ],
    ids=["after-output", "mid-line", "marker-last", "split"],
)
def test_a_form_request_among_other_output_is_found_and_removed(
    host: Host, make_plugin: Any, form: dict[str, Any]
) -> None:
    _asker(make_plugin)
    asked: list[FormRequest] = []
    stdout: list[str] = []

    def on_form(request: FormRequest) -> Mapping[str, Any]:
        asked.append(request)
        return GOOD

    def on_output(stream: str, text: str) -> None:
        if stream == "stdout":
            stdout.append(text)

    result = _tool(host).call({"forms": [form]}, timeout=30, on_form=on_form, on_output=on_output)
    assert len(asked) == 1 and asked[0].schema == SCHEMA
    assert result.success, result.error
    assert result.reply == {"success": True, "answers": [_ok(GOOD)]}
    # What the host was shown live: everything but the request.
    shown = "".join(stdout)
    assert "__ally_form_request" not in shown
    reply_line = json.dumps(result.reply) + "\n"
    assert shown == form.get("before", "") + form.get("after", "\n") + reply_line


def test_two_forms_in_one_call_are_asked_in_order(host: Host, make_plugin: Any) -> None:
    _asker(make_plugin)
    second = {"title": "More", "fields": [{"name": "why", "type": "string"}]}
    asked: list[str] = []

    def on_form(request: FormRequest) -> Mapping[str, Any]:
        asked.append(request.title)
        return GOOD if request.title == "Details" else {"why": "because"}

    result = _tool(host).call(
        {"forms": [_form(), {"schema": second, "before": "and now\n"}]}, timeout=30, on_form=on_form
    )
    assert asked == ["Details", "More"]
    assert result.success, result.error
    assert result.reply == {"success": True, "answers": [_ok(GOOD), _ok({"why": "because"})]}


def test_a_form_without_a_title_gets_one_from_the_tool_name(host: Host, make_plugin: Any) -> None:
    _asker(make_plugin)
    titles: list[str] = []

    def on_form(request: FormRequest) -> Mapping[str, Any]:
        titles.append(request.title)
        return {}

    _tool(host).call({"forms": [{"schema": {"fields": []}}]}, timeout=30, on_form=on_form)
    assert titles == ["ask form"]


def test_cancel_none_and_no_callback_send_cancelled(host: Host, make_plugin: Any) -> None:
    _asker(make_plugin)
    tool = _tool(host)
    result = tool.call({"forms": [_form()]}, timeout=30, on_form=lambda request: None)
    assert result.reply == {"success": True, "answers": [CANCELLED]}
    result = tool.call({"forms": [_form(), _form()]}, timeout=30)
    assert result.reply == {"success": True, "answers": [CANCELLED, CANCELLED]}


def test_a_callback_that_raises_sends_the_tool_an_error(host: Host, make_plugin: Any) -> None:
    _asker(make_plugin)

    def on_form(request: FormRequest) -> Optional[Mapping[str, Any]]:
        raise RuntimeError("the display is gone")

    result = _tool(host).call({"forms": [_form()]}, timeout=30, on_form=on_form)
    assert result.success
    assert result.reply == {
        "success": True,
        "answers": [
            {"__ally_form_response": True, "success": False, "error": "the display is gone"}
        ],
    }


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({**GOOD, "n": 11}, "n: must be at most 10"),
        ({**GOOD, "n": -1}, "n: must be at least 0"),
        ({**GOOD, "n": "many"}, 'n: expected a number, got "many"'),
        ({**GOOD, "n": True}, "n: expected a number, got true"),
        ({**GOOD, "color": "purple"}, 'color: "purple" is not one of "red", "green"'),
        ({**GOOD, "name": ""}, "name: required"),
        ({"n": 2}, "name: required"),
        ({**GOOD, "flag": "maybe"}, 'flag: expected true or false, got "maybe"'),
        ({**GOOD, "name": 7}, "name: expected a string, got 7"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_answers_are_validated_and_the_tool_is_told_which_field_is_wrong(
    host: Host, make_plugin: Any, answer: dict[str, Any], problem: str
) -> None:
    _asker(make_plugin)
    result = _tool(host).call({"forms": [_form()]}, timeout=30, on_form=lambda request: answer)
    (response,) = result.reply["answers"]
    assert response == {
        "__ally_form_response": True,
        "success": False,
        "error": f"forms: form 'Details': {problem}",
    }


# The other field kinds and rules of Code Ally's form UI (ToolFormWizard).
RICH: dict[str, Any] = {
    "title": "Rich",
    "fields": [
        {"name": "info", "type": "label", "label": "Read this", "description": "then answer"},
        {
            "name": "tags",
            "type": "choice",
            "multiSelect": True,
            "choices": [{"value": "a", "label": "A"}, {"value": "b", "label": "B"}],
        },
        {
            "name": "kind",
            "type": "choice",
            "choices": [{"value": "x", "label": "X"}, {"value": "__other__", "label": "Other"}],
        },
        {"name": "note", "type": "textarea", "validation": {"minLength": 2, "maxLength": 5}},
        {"name": "code", "type": "string", "validation": {"pattern": "^[A-Z]{3}$"}},
    ],
}
RICH_ANSWER = {"tags": ["a", "b"], "kind": "my own", "note": "hey", "code": "ABC"}


def test_multi_select_other_text_and_text_rules_are_accepted(host: Host, make_plugin: Any) -> None:
    _asker(make_plugin)
    tool = _tool(host)
    result = tool.call({"forms": [{"schema": RICH}]}, timeout=30, on_form=lambda r: RICH_ANSWER)
    assert result.reply["answers"] == [_ok(RICH_ANSWER)]
    picked = {**RICH_ANSWER, "kind": "x", "tags": []}
    result = tool.call({"forms": [{"schema": RICH}]}, timeout=30, on_form=lambda r: picked)
    assert result.reply["answers"] == [_ok(picked)]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"tags": "a"}, 'tags: expected a list of choices, got "a"'),
        ({"tags": ["a", "z"]}, 'tags: "z" is not one of "a", "b"'),
        ({"kind": "__other__"}, 'kind: "__other__" is not one of "x" or any other text'),
        ({"kind": 3}, 'kind: 3 is not one of "x" or any other text'),
        ({"note": "x"}, "note: must be at least 2 characters"),
        ({"note": "toolong"}, "note: must be at most 5 characters"),
        ({"code": "abc"}, "code: does not match the pattern '^[A-Z]{3}$'"),
        ({"code": 5}, "code: expected a string, got 5"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_multi_select_other_text_and_text_rules_are_validated(
    host: Host, make_plugin: Any, answer: dict[str, Any], problem: str
) -> None:
    _asker(make_plugin)
    result = _tool(host).call(
        {"forms": [{"schema": RICH}]}, timeout=30, on_form=lambda r: {**RICH_ANSWER, **answer}
    )
    (response,) = result.reply["answers"]
    assert response["error"] == f"forms: form 'Rich': {problem}"


def test_answers_typed_as_text_are_sent_with_the_fields_types(host: Host, make_plugin: Any) -> None:
    # What a prompt returns ("5", "yes") reaches the tool as a number and a boolean.
    _asker(make_plugin)
    answer = {"name": "Ada", "n": "5", "color": "red", "flag": "yes"}
    result = _tool(host).call({"forms": [_form()]}, timeout=30, on_form=lambda request: answer)
    assert result.reply["answers"] == [_ok({"name": "Ada", "n": 5, "color": "red", "flag": True})]


@pytest.mark.parametrize("poll", [False, True], ids=["plain", "with-cancel-event"])
def test_time_spent_answering_does_not_count_against_the_timeout(
    host: Host, make_plugin: Any, poll: bool
) -> None:
    # With a cancel event the timeout is checked every 50 ms, so a timeout that wrongly
    # counted the answer's time would end the tool during its second of work after it.
    # The tool's own time (start-up and that second) stays well under its 4 s timeout.
    _asker(make_plugin)
    tool = _tool(host)
    cancel = threading.Event() if poll else None

    def slow(request: FormRequest) -> Mapping[str, Any]:
        time.sleep(5)  # longer than the tool's whole timeout
        return GOOD

    result = tool.call({"forms": [_form(sleep_after=1)]}, timeout=4, on_form=slow, cancel=cancel)
    assert result.success, result.error
    assert result.reply == {"success": True, "answers": [_ok(GOOD)]}
    # The timeout still holds for the tool's own time after the answer.
    with pytest.raises(ToolError) as info:
        tool.call(
            {"forms": [_form(sleep_after=60)]}, timeout=4, on_form=lambda r: GOOD, cancel=cancel
        )
    assert info.value.error_type == "timeout"


def test_a_tool_not_declared_interactive_gets_no_answer(host: Host, make_plugin: Any) -> None:
    # As in Code Ally: only "interactive": true keeps stdin open; the form is left unanswered,
    # stays in the output, and the tool reads end-of-file.
    _asker(make_plugin, interactive=False)
    called: list[Any] = []
    (outcome,) = host.load(["forms"])
    result = outcome.tool("ask").call({"forms": [_form()]}, timeout=30, on_form=called.append)
    assert called == []
    assert result.success and result.reply == {"success": True, "answers": [None]}


# ---------------------------------------------------------------------------------------------
# ally run


def test_ally_run_form_response_is_laid_over_defaults_and_initial_values(
    make_plugin: Any, ally_cli: Any
) -> None:
    _asker(make_plugin)
    forms = {"forms": [_form(initialValues={"name": "Grace", "n": 4})]}
    proc = ally_cli(
        "run", "forms", "ask", "--input", json.dumps(forms), "--form-response", '{"flag": true}'
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "success": True,
        "answers": [_ok({"name": "Grace", "n": 4, "color": "red", "flag": True})],
    }
    # The given values win over initial values; every form of the call gets them.
    forms = {"forms": [_form(initialValues={"name": "Grace"}), _form()]}
    proc = ally_cli(
        "run", "forms", "ask", "--input", json.dumps(forms),
        "--form-response", '{"name": "Lin", "n": 9}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = _ok({"name": "Lin", "n": 9, "color": "red", "flag": False})
    assert json.loads(proc.stdout) == {"success": True, "answers": [answer, answer]}


def test_ally_run_form_response_that_fails_validation_is_sent_as_an_error(
    make_plugin: Any, ally_cli: Any
) -> None:
    _asker(make_plugin)
    proc = ally_cli(
        "run", "forms", "ask", "--input", json.dumps({"forms": [_form()]}),
        "--form-response", '{"name": "Ada", "n": 99}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (response,) = json.loads(proc.stdout)["answers"]
    assert response["success"] is False
    assert response["error"] == "forms: form 'Details': n: must be at most 10"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("{not json", "ally: error: --form-response is not valid JSON: "),
        ("[1, 2]", "ally: error: --form-response must be a JSON object"),
    ],
)
def test_ally_run_refuses_a_form_response_that_is_not_an_object(
    make_plugin: Any, ally_cli: Any, given: str, message: str
) -> None:
    _asker(make_plugin)
    proc = ally_cli(
        "run", "-q", "forms", "ask", "--input", json.dumps({"forms": [_form()]}),
        "--form-response", given,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(message)


def test_ally_run_without_a_terminal_cancels_and_says_so(make_plugin: Any, ally_cli: Any) -> None:
    _asker(make_plugin)
    proc = ally_cli(
        "run", "-q", "forms", "ask", "--input", json.dumps({"forms": [_form()]}), input=""
    )  # fmt: skip
    # The tool decides what a cancel means; this one still succeeds.
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"success": True, "answers": [CANCELLED]}
    assert proc.stderr == (
        "ally: forms: tool 'ask' asked the form 'Details'; cancelled "
        "(no terminal; answer it with --form-response JSON)\n"
    )


class _Terminal:
    """``ally run`` with a pseudo-terminal as stdin and stderr, stdout a pipe."""

    def __init__(self, *args: str) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ally_core.cli", *args],
            stdin=slave,
            stderr=slave,
            stdout=subprocess.PIPE,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 30) -> None:
        """Read the terminal until ``text`` was shown (or the CLI ended)."""
        import select

        want = text.encode()
        deadline = time.monotonic() + timeout
        while want not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the CLI closed the terminal
                    break
        assert want in self.seen, self.seen.decode(errors="replace")
        self.seen = self.seen[self.seen.index(want) + len(want) :]

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self) -> tuple[int, str]:
        stdout, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, stdout.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., _Terminal]]:
    """``terminal(*args)`` starts ``ally run``-like CLIs on terminals, ended at teardown."""
    started: list[_Terminal] = []

    def start(*args: str) -> _Terminal:
        started.append(_Terminal(*args))
        return started[-1]

    yield start
    for term in started:
        term.close()


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_ally_run_on_a_terminal_asks_field_by_field_on_stderr(
    make_plugin: Any, terminal: Any
) -> None:
    _asker(make_plugin)
    forms = {"forms": [_form(initialValues={"name": "Grace"})]}
    term = terminal("run", "forms", "ask", "--input", json.dumps(forms))
    term.expect("Details: A few questions")
    term.expect("Name [Grace]: ")
    term.type("\n")  # keeps the initial value
    term.expect("How many [1]: ")
    term.type("11\n")
    term.expect("n: must be at most 10")
    term.expect("How many [1]: ")  # asked again, the default unchanged
    term.type("4\n")
    term.expect("  1. Red")
    term.expect("  2. green")
    term.expect("Colour [red]: ")
    term.type("2\n")  # by number
    term.expect("Flag [False]: ")
    term.type("yes\n")
    code, stdout = term.finish()
    assert code == 0
    # stdout holds the tool's reply and nothing else: no prompt.
    assert json.loads(stdout) == {
        "success": True,
        "answers": [_ok({"name": "Grace", "n": 4, "color": "green", "flag": True})],
    }


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_ally_run_on_a_terminal_end_of_input_cancels_the_form(
    make_plugin: Any, terminal: Any
) -> None:
    _asker(make_plugin)
    term = terminal("run", "forms", "ask", "--input", json.dumps({"forms": [_form()]}))
    term.expect("Name: ")
    term.type("\x04")  # Ctrl-D
    code, stdout = term.finish()
    assert code == 0
    assert json.loads(stdout) == {"success": True, "answers": [CANCELLED]}


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_ally_run_on_a_terminal_shows_labels_and_takes_several_choices(
    make_plugin: Any, terminal: Any
) -> None:
    _asker(make_plugin)
    term = terminal("run", "forms", "ask", "--input", json.dumps({"forms": [{"schema": RICH}]}))
    term.expect("Read this: then answer")
    term.expect("  2. B")
    term.expect("tags: ")
    term.type("1, b\n")  # by number and by value
    term.expect("  2. Other")
    term.expect("kind: ")
    term.type("my own\n")  # the "Other" choice: any text
    term.expect("note: ")
    term.type("x\n")
    term.expect("note: must be at least 2 characters")
    term.expect("note: ")
    term.type("hey\n")
    term.expect("code: ")
    term.type("ABC\n")
    code, stdout = term.finish()
    assert code == 0
    assert json.loads(stdout) == {"success": True, "answers": [_ok(RICH_ANSWER)]}
