"""How a tool's reply is read (``ally_core/replies.py``), case by case, without processes.

The rules are Code Ally's (see the module docstring); ``test_tools.py`` checks the same reading
end to end with real tool processes. These run in milliseconds, so a mutation run
(``tools/mutation.py replies``) kills most mutants here before it starts any process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ally_core.replies import (
    QUOTE_LIMIT,
    TAIL_LIMIT,
    ToolResult,
    interpret_reply,
    mask_text,
    mask_value,
    parse_json_reply,
)
from ally_core.text import MASK


def read(stdout: str, stderr: str = "", code: int = 0) -> ToolResult:
    return interpret_reply(stdout, stderr, code, label="p: tool 't'", duration=0.5)


# -- successes ---------------------------------------------------------------------------------


def test_a_success_reply_keeps_data_result_message_and_logs():
    reply = {"success": True, "data": {"n": 1}, "result": 42, "message": "done"}
    got = read(json.dumps(reply), stderr="log line\n")
    assert got == ToolResult(
        True,
        result=42,
        reply=reply,
        data={"n": 1},
        message="done",
        logs="log line\n",
        exit_code=0,
        stderr="log line\n",
        duration=0.5,
    )
    assert got.to_json() == reply


def test_without_data_the_payload_is_the_whole_reply_and_result_is_it_too():
    got = read('{"answer": 7}')
    assert got.success and got.data == {"answer": 7} and got.result == {"answer": 7}
    assert got.error is None and got.error_type is None and got.logs == ""
    assert got.to_json() == {"answer": 7, "success": True}


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None, True])
def test_a_reply_that_is_not_an_object_is_the_payload(value: Any):
    got = read(json.dumps(value))
    assert got.success and got.reply == value and got.data == value and got.result == value
    # (JSON null reads as no reply at all)
    assert got.to_json() == (
        {"success": True} if value is None else {"data": value, "success": True}
    )


def test_lines_before_the_reply_are_skipped_but_never_after_it():
    assert read('debug print\n\n{"success": true, "result": 1}\n\n').result == 1
    got = read('{"success": true}\ntrailing words')
    assert not got.success and got.error_type == "invalid_output"


def test_a_message_that_is_not_a_string_is_shown_as_json():
    assert read('{"message": {"k": [1]}}').message == '{"k": [1]}'
    assert read('{"message": null}').message is None


def test_stderr_kept_as_logs_is_its_tail():
    stderr = "x" * (TAIL_LIMIT + 10) + "END"
    got = read('{"success": true}', stderr=stderr)
    assert got.logs == stderr[-TAIL_LIMIT:] and got.stderr == stderr[-TAIL_LIMIT:]
    assert read('{"success": true}', stderr=" \n ").logs == ""


# -- failures the tool reports -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error", "error_type"),
    [
        ({"success": False, "error": "no city", "error_type": "nf"}, "no city", "nf"),
        ({"success": False, "message": "said why"}, "said why", "tool_error"),
        ({"success": False}, "p: tool 't' failed", "tool_error"),
        ({"success": False, "error": {"code": 3}}, '{"code": 3}', "tool_error"),
        ({"success": False, "error": "x", "error_type": ""}, "x", "tool_error"),
        ({"success": False, "error": "x", "error_type": 5}, "x", "tool_error"),
        ({"error": "bad input"}, "bad input", "tool_error"),
    ],
)
def test_a_failure_reply_is_a_failed_result_with_the_tools_words(
    reply: dict[str, Any], error: str, error_type: str
):
    got = read(json.dumps(reply))
    assert not got.success
    assert got.error == error and got.error_type == error_type
    assert got.reply == reply and got.exit_code == 0
    out = got.to_json()
    assert out["success"] is False and out["error"] == error
    assert out.get("error_type") == error_type


def test_a_failure_keeps_the_data_it_carries():
    got = read('{"success": false, "error": "partial", "data": [1], "result": "r"}')
    assert not got.success and got.data == [1] and got.result == "r"
    got = read('{"success": false, "error": "none"}')
    assert got.data is None and got.result is None


@pytest.mark.parametrize(
    "reply", [{"error": ""}, {"error": None}, {"success": True, "error": "ignored"}]
)
def test_an_empty_error_or_an_explicit_success_is_no_failure(reply: dict[str, Any]):
    assert read(json.dumps(reply)).success


def test_success_must_be_false_itself_to_fail():
    assert read('{"success": 0, "result": 1}').success  # Code Ally compared with `false`
    assert not read('{"success": false}').success


# -- failures ally finds -----------------------------------------------------------------------


def test_no_output_is_a_failure_quoting_stderr():
    got = read("", stderr="line one\n\n  line two  \n")
    assert got == ToolResult(
        False,
        error="p: tool 't' produced no output; stderr: line one | line two",
        error_type="invalid_output",
        stderr="line one\n\n  line two  \n",
        duration=0.5,
    )
    assert read("  \n").error == "p: tool 't' produced no output"


def test_no_output_and_an_exit_code_names_the_code():
    got = read("", stderr="boom", code=3)
    assert got.error == "p: tool 't' exited with code 3 and produced no output; stderr: boom"
    assert got.error_type == "exit_code" and got.exit_code == 3


def test_output_that_is_not_json_is_quoted_with_stderr():
    got = read("hello\nworld", stderr="warn")
    assert got.error == "p: tool 't' printed output that is not JSON: hello | world; stderr: warn"
    assert got.error_type == "invalid_output" and got.reply is None
    assert read("hello").error == "p: tool 't' printed output that is not JSON: hello"
    got = read("Traceback", code=2)
    assert got.error == "p: tool 't' exited with code 2: Traceback"
    assert got.error_type == "exit_code"


def test_quoted_output_is_capped_to_its_end():
    stdout = "a" * QUOTE_LIMIT + "TAIL"
    got = read(stdout)
    assert got.error == f"p: tool 't' printed output that is not JSON: …{stdout[-QUOTE_LIMIT:]}"
    exact = "b" * QUOTE_LIMIT
    assert read(exact).error == f"p: tool 't' printed output that is not JSON: {exact}"


def test_a_non_zero_exit_after_a_success_reply_is_a_failure():
    got = read('{"success": true, "result": 1}', stderr="oops", code=4)
    assert not got.success and got.error_type == "exit_code" and got.result == 1
    assert got.error == (
        "p: tool 't' exited with code 4 after a success reply: "
        '{"success": true, "result": 1}; stderr: oops'
    )
    assert read('{"success": true}', code=1).error == (
        "p: tool 't' exited with code 1 after a success reply: {\"success\": true}"
    )


def test_a_failure_reply_and_an_exit_code_keep_the_tools_words():
    got = read('{"success": false, "error": "own words", "error_type": "x"}', code=5)
    assert got.error == "own words (exit code 5)" and got.error_type == "x"


def test_a_reply_nested_too_deep_for_json_is_not_json():
    deep = "[" * 100_000 + "]" * 100_000
    assert parse_json_reply(deep) == (False, None)
    assert parse_json_reply("junk\n" + deep) == (False, None)
    assert parse_json_reply("") == (False, None)
    assert parse_json_reply(" 1 ") == (True, 1)


# -- masking -----------------------------------------------------------------------------------


def test_mask_text_replaces_every_occurrence_of_every_secret():
    assert mask_text("a s1 b s2 s1", ["s1", "s2"]) == f"a {MASK} b {MASK} {MASK}"
    assert mask_text("nothing", ["", "zz"]) == "nothing"


def test_mask_value_masks_strings_keys_and_nested_values_only():
    value = {"s1": ["x s1", {"k": "s1"}], "n": 1, "b": None}
    assert mask_value(value, ["s1"]) == {MASK: [f"x {MASK}", {"k": MASK}], "n": 1, "b": None}
    assert mask_value(7, ["7"]) == 7


def test_masked_masks_the_reply_data_and_result_and_nothing_without_secrets():
    got = read('{"success": true, "data": "has s3cret", "result": ["s3cret"]}')
    assert got.masked() is got
    secret = ToolResult(
        True, result=["s3cret"], reply={"v": "s3cret"}, data="has s3cret", secrets=("s3cret",)
    )
    masked = secret.masked()
    assert masked.result == [MASK] and masked.reply == {"v": MASK} and masked.data == f"has {MASK}"
    assert secret.result == ["s3cret"]  # the original is left as it was


def test_to_json_of_a_result_without_a_reply():
    assert ToolResult(True, result=3).to_json() == {"success": True, "result": 3}
    assert ToolResult(True).to_json() == {"success": True}
    assert ToolResult(False, error="e").to_json() == {"success": False, "error": "e"}


# -- what the first mutation run of this module left alive ------------------------------------


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        ("", "p: tool 't' exited with code -9 and produced no output"),
        ("not json", "p: tool 't' exited with code -9: not json"),
        ('{"success": true}', "p: tool 't' exited with code -9 after a success reply"),
        ('{"success": false, "error": "own"}', "own (exit code -9)"),
    ],
)
def test_a_tool_killed_by_a_signal_failed_whatever_it_printed(stdout: str, error: str):
    """A negative exit code is a signal (-9: SIGKILL): never a success."""
    got = read(stdout, code=-9)
    assert not got.success and got.exit_code == -9
    assert got.error is not None and got.error.startswith(error), got.error
    assert got.error_type == ("tool_error" if "own" in stdout else "exit_code")


def test_interpret_reply_takes_every_argument_by_keyword():
    got = interpret_reply(stdout='{"a": 1}', stderr="", exit_code=0, label="x", duration=2.0)
    assert got.success and got.data == {"a": 1} and got.duration == 2.0


def test_a_results_secrets_are_not_in_its_repr():
    result = ToolResult(True, result="ok", secrets=("hunter2-secret",))
    assert "hunter2-secret" not in repr(result)
    assert result == ToolResult(True, result="ok")  # secrets are not part of what it says


def test_the_stderr_kept_is_the_last_4000_characters_as_documented():
    stderr = "".join(chr(ord("a") + i % 26) for i in range(5000))
    assert read('{"success": true}', stderr=stderr).stderr == stderr[-4000:]
    assert read("", stderr=stderr[:4000]).stderr == stderr[:4000]
