"""plugin.json: path-qualified errors, containment of named files, tolerated keys, fuzzing.

A broken manifest blocks its own plugin with one clear line and never stops the others; no
input, however malformed, makes the loader raise anything but an AllyError outcome.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ally_core import (
    EnvInfo,
    EnvSpec,
    Health,
    Host,
    InstallResult,
    Interpreter,
    Manifest,
    ManifestError,
    hookimpl,
    parse_manifest,
)
from ally_core.manifest import KNOWN_EXTRA_KEYS, load_manifest, manifest_warnings
from ally_core.plugin_manager import make_plugin_manager
from ally_core.schema import plugin_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "plugins").glob("*/plugin.json"))

VALID: dict[str, Any] = {
    "name": "calc",
    "version": "1.0.0",
    "description": "A calculator",
    "author": {"name": "someone"},
    "runtime": "python3",
    "runtime_version": ">=3.9",
    "dependencies": {"file": "requirements.txt"},
    "tools": [
        {
            "name": "add",
            "command": "python3",
            "args": ["main.py", "add"],
            "description": "Add numbers",
            "schema": {"type": "object", "properties": {"a": {"type": "number"}}},
            "timeout": 5,
        }
    ],
    "config": {"type": "object", "properties": {"token": {"type": "string", "secret": True}}},
}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return info.value.problems


# -- parse_manifest ---------------------------------------------------------------------------


def test_valid_manifest_is_structured_into_attrs_models() -> None:
    manifest = parse_manifest(VALID)
    assert isinstance(manifest, Manifest)
    assert manifest.name == "calc"
    assert manifest.dependencies is not None
    assert manifest.dependencies.file == "requirements.txt"
    tool = manifest.tool("add")
    assert tool is not None and tool.args == ["main.py", "add"] and tool.timeout == 5.0
    assert manifest_warnings(manifest) == []


def test_missing_name_is_reported_with_its_json_path() -> None:
    assert problems_of({"runtime": "python3"}) == ["$.name: required field missing"]


def test_all_type_errors_are_reported_together_each_with_its_json_path() -> None:
    data = {
        "name": "calc",
        "version": 3,
        "runtime": ["python3"],
        "dependencies": {"file": 7},
        "tools": [
            {"name": "t", "command": "python3", "args": "main.py"},
            {"command": 1},
            {"name": "u", "command": "x", "args": ["ok", 2]},
        ],
    }
    problems = problems_of(data)
    for expected in (
        "$.version: expected a string, got a number",
        "$.runtime: expected a string, got an array",
        "$.dependencies.file: expected a string, got a number",
        "$.tools[0].args: expected a list of strings, got a string",
        "$.tools[1].name: required field missing",
        "$.tools[1].command: expected a string, got a number",
        "$.tools[2].args[1]: expected a string, got a number",
    ):
        assert expected in problems, problems
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("calc: plugin.json: ")
    assert "$.tools[0].args" in message and "$.version" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "$: expected an object, got an array"),
        ({"name": True}, "$.name: expected a string, got a boolean"),
        ({"name": "x", "tools": "run"}, "$.tools: expected a list of tools, got a string"),
        ({"name": "x", "tools": [[]]}, "$.tools[0]: expected an object, got an array"),
        (
            {"name": "x", "tools": [{"name": "t", "command": "c", "timeout": True}]},
            "$.tools[0].timeout: expected a number, got a boolean",
        ),
        (
            {"name": "x", "tools": [{"name": "t", "command": "c", "timeout": 0}]},
            "$.tools[0].timeout: must be positive",
        ),
        (
            {"name": "x", "tools": [{"name": "t", "command": " "}]},
            "$.tools[0].command: must not be empty",
        ),
        (
            {"name": "x", "tools": [{"name": "t", "command": "a"}, {"name": "t", "command": "b"}]},
            "$.tools[1].name: duplicate tool name 't'",
        ),
        ({"name": "x", "config": []}, "$.config: expected an object, got an array"),
        (
            {"name": "x", "runtime": "python3", "dependencies": {}},
            "$.dependencies: needs 'file' or 'install_command'",
        ),
        (
            {"name": "x", "dependencies": {"file": "r.txt"}},
            "$.runtime: required when 'dependencies' is given",
        ),
    ],
)
def test_each_invalid_shape_names_its_json_path(data: Any, expected: str) -> None:
    assert expected in problems_of(data)


@pytest.mark.parametrize("name", ["../evil", "..", ".", "a/b", "/abs", "-x", "", "a\\b", "é"])
def test_plugin_name_that_could_leave_the_env_store_is_rejected(name: str) -> None:
    (problem,) = problems_of({"name": name})
    assert problem.startswith("$.name: ")
    assert "not a valid plugin name" in problem


@pytest.mark.parametrize("name", ["evil\n", "ok\nsecond"])
def test_plugin_name_with_a_newline_is_rejected(name: str) -> None:
    # The name becomes a directory in the env store and appears in one-line errors.
    (problem,) = problems_of({"name": name})
    assert "not a valid plugin name" in problem


def test_code_ally_keys_are_kept_without_warnings() -> None:
    data = {
        "name": "ally-tools",
        "config": {"type": "object", "properties": {}},
        "activationMode": "always",
        "agents": [{"name": "helper"}],
        "visible_to": ["main"],
        "tools": [
            {
                "name": "t",
                "command": "python3",
                "requiresConfirmation": True,
                "subtext": "does things",
                "visible_to": ["main"],
            }
        ],
    }
    manifest = parse_manifest(data)
    assert manifest.extra["activationMode"] == "always"
    assert manifest.extra["agents"] == [{"name": "helper"}]
    assert manifest.extra["visible_to"] == ["main"]
    assert manifest.config == {"type": "object", "properties": {}}
    assert manifest.tools[0].extra == {
        "requiresConfirmation": True,
        "subtext": "does things",
        "visible_to": ["main"],
    }
    assert manifest_warnings(manifest) == []


def test_unknown_keys_are_kept_with_a_warning(host: Host, make_plugin: Any) -> None:
    make_plugin(
        "future",
        {"colour": "blue", "tools": [{"name": "t", "command": "python3", "retries": 3}]},
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.manifest is not None
    assert outcome.manifest.extra == {"colour": "blue"}
    assert outcome.manifest.tools[0].extra == {"retries": 3}
    assert outcome.warnings == [
        "$.colour: unknown key (kept)",
        "$.tools[0].retries: unknown key (kept)",
    ]


# -- plugin.json on disk, through the loader --------------------------------------------------


def test_invalid_json_is_reported_with_line_and_column(host: Host, make_plugin: Any) -> None:
    plugin_dir = make_plugin("broken")
    (plugin_dir / "plugin.json").write_text('{\n  "name": "broken",\n  "tools": [}\n', "utf-8")
    make_plugin("fine")
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["fine"].ready
    broken = outcomes["broken"]
    assert broken.status == "blocked"
    assert broken.reason.startswith("plugin.json: invalid JSON at line 3 column 13")
    assert isinstance(broken.error, ManifestError)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_rejected(
    host: Host, make_plugin: Any, constant: str
) -> None:
    # Python's json module accepts them; a timeout of NaN or Infinity is no timeout at all.
    plugin_dir = make_plugin("odd-numbers")
    (plugin_dir / "plugin.json").write_text(
        '{"name": "odd-numbers", "tools": [{"name": "t", "command": "python3", '
        f'"timeout": {constant}}}]}}',
        "utf-8",
    )
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert outcome.reason.startswith("plugin.json: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_tool_timeout_must_be_a_finite_number(value: float) -> None:
    problems = problems_of(
        {"name": "x", "tools": [{"name": "t", "command": "c", "timeout": value}]}
    )
    assert any(p.startswith("$.tools[0].timeout: ") for p in problems), problems


def test_manifest_that_is_not_utf8_is_reported(host: Host, make_plugin: Any) -> None:
    plugin_dir = make_plugin("latin")
    (plugin_dir / "plugin.json").write_bytes(b'{"name": "latin", "description": "caf\xe9"}')
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "not UTF-8" in outcome.reason


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "plugin.json").write_text("[" * 200_000 + "]" * 200_000, "utf-8")
    with pytest.raises(ManifestError):
        load_manifest(tmp_path)


def test_traversing_name_blocks_only_that_plugin_and_creates_nothing_outside(
    host: Host, make_plugin: Any, ally_home: Path, no_spawn: Any
) -> None:
    make_plugin(
        "evil",
        {"name": "../evil", "runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "\n"},
    )
    make_plugin("good")
    with no_spawn():
        outcomes = {o.plugin_dir.name: o for o in host.load()}
    assert outcomes["good"].ready
    assert outcomes["evil"].status == "blocked"
    assert "'../evil' is not a valid plugin name" in outcomes["evil"].reason
    assert not (ally_home / "evil").exists()
    assert not (host.paths.envs_dir / "evil").exists()


def test_duplicate_plugin_names_block_both_directories_naming_the_other(
    host: Host, make_plugin: Any
) -> None:
    first = make_plugin("a-first", {"name": "same"})
    second = make_plugin("b-second", {"name": "same"})
    outcomes = host.load()
    assert [(o.plugin_dir.name, o.status) for o in outcomes] == [
        ("a-first", "blocked"),
        ("b-second", "blocked"),
    ]
    assert f"'same' is also declared by {second}" in outcomes[0].reason
    assert f"'same' is also declared by {first}" in outcomes[1].reason


def test_unknown_runtime_names_the_installed_runtimes(
    host: Host, make_plugin: Any, no_spawn: Any
) -> None:
    make_plugin(
        "cobol-thing",
        {"runtime": "cobol", "dependencies": {"file": "deps.txt"}},
        files={"deps.txt": "x\n"},
    )
    make_plugin("good")
    with no_spawn():
        outcomes = {o.name: o for o in host.load()}
    assert outcomes["good"].ready
    reason = outcomes["cobol-thing"].reason
    assert outcomes["cobol-thing"].status == "blocked"
    assert "unknown runtime 'cobol'" in reason
    assert "installed runtimes:" in reason and "python3" in reason and "python," in reason
    assert "ally-runtime-cobol" in reason


def test_missing_dependency_file_blocks_with_a_clear_reason(
    host: Host, make_plugin: Any, no_spawn: Any
) -> None:
    make_plugin("nodeps-file", {"runtime": "python3", "dependencies": {"file": "reqs.txt"}})
    with no_spawn():
        (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert "$.dependencies.file: 'reqs.txt' does not exist" in outcome.reason


@pytest.fixture
def outside_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "requirements.txt"
    path.parent.mkdir()
    path.write_text("allydemo-greet\n", "utf-8")
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked-dir"])
def test_dependency_file_outside_the_plugin_blocks_it_and_others_still_load(
    host: Host, make_plugin: Any, outside_file: Path, no_spawn: Any, how: str
) -> None:
    files: dict[str, str] = {}
    if how == "dotdot":
        dep = "../../../outside/requirements.txt"
    elif how == "absolute":
        dep = str(outside_file)
    else:
        dep = "requirements.txt" if how == "symlink" else "sub/requirements.txt"
    plugin_dir = make_plugin(
        "escape", {"runtime": "python3", "dependencies": {"file": dep}}, files=files
    )
    if how == "dotdot":
        assert (plugin_dir / dep).resolve() == outside_file.resolve()
    elif how == "symlink":
        os.symlink(outside_file, plugin_dir / "requirements.txt")
    elif how == "symlinked-dir":
        os.symlink(outside_file.parent, plugin_dir / "sub")
    make_plugin("good", {"tools": [{"name": "t", "command": "python3"}]})
    with no_spawn():
        outcomes = {o.name: o for o in host.load()}
    assert outcomes["good"].ready
    escape = outcomes["escape"]
    assert escape.status == "blocked"
    assert "\n" not in escape.reason
    assert escape.reason == (
        f"plugin.json: $.dependencies.file: {dep!r} is outside the plugin directory"
    )
    assert not (host.paths.envs_dir / "escape").exists()


# -- the published JSON schema ----------------------------------------------------------------


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_schema_and_parser_accept_the_example_manifests(path: Path) -> None:
    data = json.loads(path.read_text("utf-8"))
    validator = jsonschema.Draft202012Validator(plugin_schema())
    assert list(validator.iter_errors(data)) == []
    assert parse_manifest(data).name == path.parent.name


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(plugin_schema())


INVALID_FOR_BOTH = [
    {"runtime": "python3"},
    {"name": "../evil"},
    {"name": 5},
    {"name": "x", "dependencies": {"file": "r.txt"}},
    {"name": "x", "runtime": "python3", "dependencies": {}},
    {"name": "x", "tools": [{"name": "t"}]},
    {"name": "x", "tools": [{"name": "t", "command": "c", "args": "a"}]},
    {"name": "x", "tools": [{"name": "t", "command": "c", "args": [1]}]},
    {"name": "x", "tools": [{"name": "t", "command": "c", "timeout": 0}]},
    {"name": "x", "tools": [{"name": "", "command": "c"}]},
    {"name": "x", "tools": {"t": {}}},
    {"name": "x", "config": "yes"},
]


@pytest.mark.parametrize("data", INVALID_FOR_BOTH, ids=lambda d: json.dumps(d)[:40])
def test_schema_and_parser_both_reject_invalid_manifests(data: Any) -> None:
    validator = jsonschema.Draft202012Validator(plugin_schema())
    assert list(validator.iter_errors(data)), "the schema accepted it"
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_schema_documents_every_code_ally_key_the_parser_keeps_silently() -> None:
    schema = plugin_schema()
    for key in ("config", "activationMode", "agents", "visible_to"):
        assert key in schema["properties"] or key in KNOWN_EXTRA_KEYS
    tool_props = schema["$defs"]["tool"]["properties"]
    assert {"requiresConfirmation", "subtext"} <= set(tool_props)


# -- fuzzing ----------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
interesting_strings = st.sampled_from(
    [
        "",
        " ",
        "python3",
        "python",
        "node",
        "cobol",
        "requirements.txt",
        "../requirements.txt",
        "/etc/passwd",
        "link.txt",
        "sub/../requirements.txt",
        "main.py",
        "../outside.sh",
        "/bin/sh",
        "calc",
        "../evil",
        "évil",
        "a\nb",
        "\x00",
        "~",
        "$(touch pwned)",
        "true; touch pwned",
        ">=3.9",
        ">=4",
        "not a specifier",
    ]
)
mutation_values = interesting_strings | json_values

#: Places in a valid manifest a mutation may hit.
LOCATIONS: list[tuple[Any, ...]] = [
    (),
    ("name",),
    ("version",),
    ("author",),
    ("runtime",),
    ("runtime_version",),
    ("dependencies",),
    ("dependencies", "file"),
    ("dependencies", "install_command"),
    ("dependencies", "extra"),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "name"),
    ("tools", 0, "command"),
    ("tools", 0, "args"),
    ("tools", 0, "args", 0),
    ("tools", 0, "schema"),
    ("tools", 0, "timeout"),
    ("tools", 1),
    ("config",),
    ("config", "properties"),
    ("activationMode",),
]
DELETE = object()


def mutate(data: Any, location: tuple[Any, ...], value: Any) -> Any:
    if not location:
        return value if value is not DELETE else {}
    node = data
    for key in location[:-1]:
        found = isinstance(node, dict) and key in node
        found = found or (isinstance(node, list) and isinstance(key, int) and key < len(node))
        if found:
            node = node[key]
        else:
            return data
    last = location[-1]
    if isinstance(node, dict):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if value is DELETE:
            if last < len(node):
                del node[last]
        elif last < len(node):
            node[last] = value
        else:
            node.append(value)
    return data


mutations = st.lists(
    st.tuples(st.sampled_from(LOCATIONS), st.just(DELETE) | interesting_strings | mutation_values),
    min_size=1,
    max_size=4,
)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    data: Any = copy.deepcopy(VALID)
    for location, value in draw(mutations):
        data = mutate(data, location, value)
    return data


def check_parse(data: Any) -> None:
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p.startswith("$") for p in exc.problems), exc.problems
        return
    assert isinstance(manifest, Manifest)
    assert isinstance(manifest.name, str)
    assert all(isinstance(a, str) for t in manifest.tools for a in t.args)
    manifest_warnings(manifest)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_arbitrary_json_never_crashes_parse_manifest(data: Any) -> None:
    check_parse(data)


@settings(max_examples=300, deadline=None)
@given(mutated_manifests())
def test_fuzz_mutated_manifests_never_crash_parse_manifest(data: Any) -> None:
    check_parse(data)


class InProcessRuntime:
    """A runtime building nothing on disk but an empty dir: the loader's paths, no processes.

    Registered last, it answers before the built-in python runtime for the names it serves,
    so the fuzzed manifests reach the whole loader (containment checks, builds, publishing)
    without starting installers.
    """

    names = ("python3", "python", "node")

    def _serves(self, spec: EnvSpec) -> bool:
        return spec.runtime in self.names

    @hookimpl
    def runtime_names(self) -> list[str]:
        return list(self.names)

    @hookimpl
    def env_identity(self, spec: EnvSpec) -> Any:
        return {"fuzz": True} if self._serves(spec) else None

    @hookimpl
    def resolve_interpreter(self, spec: EnvSpec) -> Any:
        return Interpreter(sys.executable, "3", kind="fuzz") if self._serves(spec) else None

    @hookimpl
    def create_env(self, spec: EnvSpec, interpreter: Interpreter) -> Any:
        if not self._serves(spec):
            return None
        spec.env_dir.mkdir()
        return EnvInfo(path=spec.env_dir, interpreter=interpreter)

    @hookimpl
    def install_deps(self, spec: EnvSpec, env: EnvInfo) -> Any:
        return InstallResult() if self._serves(spec) else None

    @hookimpl
    def health_check(self, spec: EnvSpec, env: EnvInfo, deep: bool) -> Any:
        return Health() if self._serves(spec) else None


@pytest.fixture
def fuzz_home(tmp_path: Path, ally_home: Path) -> Iterator[tuple[Path, Path]]:
    """A home with one plugin dir to overwrite, a dependency file, and a link leaving it."""
    plugin_dir = ally_home / "plugins" / "fuzzed"
    plugin_dir.mkdir()
    (plugin_dir / "requirements.txt").write_text("allydemo-greet\n", "utf-8")
    (plugin_dir / "main.py").write_text("print('{}')\n", "utf-8")
    outside = tmp_path / "outside.txt"
    outside.write_text("x\n", "utf-8")
    os.symlink(outside, plugin_dir / "link.txt")
    (ally_home / "plugins" / "bystander").mkdir()
    (ally_home / "plugins" / "bystander" / "plugin.json").write_text('{"name": "bystander"}')
    yield ally_home, plugin_dir


def fuzz_host(home: Path) -> Host:
    pm = make_plugin_manager({}, load_entrypoints=False)
    pm.register(InProcessRuntime(), name="fuzzrt")
    return Host(home, plugin_manager=pm)


def check_load(home: Path) -> None:
    outcomes = fuzz_host(home).load()
    names = {o.plugin_dir.name: o for o in outcomes}
    assert names["bystander"].ready
    fuzzed = names["fuzzed"]
    assert fuzzed.status in {"ready", "blocked"}
    assert "\n" not in fuzzed.reason
    if fuzzed.status == "blocked":
        assert fuzzed.reason
    else:
        assert fuzzed.manifest is not None
    assert not (home / "pwned").exists()
    assert not (home / "plugins" / "fuzzed" / "pwned").exists()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.one_of(mutated_manifests(), json_values))
def test_fuzz_manifests_on_disk_never_crash_host_load(
    fuzz_home: tuple[Path, Path], no_spawn: Any, data: Any
) -> None:
    home, plugin_dir = fuzz_home
    (plugin_dir / "plugin.json").write_text(json.dumps(data), "utf-8")
    with no_spawn():
        check_load(home)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(
            mutated_manifests(), st.integers(min_value=0), st.binary(min_size=1, max_size=3)
        ).map(lambda t: _splice(json.dumps(t[0]).encode(), t[1], t[2])),
    )
)
def test_fuzz_raw_bytes_including_invalid_utf8_never_crash_host_load(
    fuzz_home: tuple[Path, Path], no_spawn: Any, raw: bytes
) -> None:
    home, plugin_dir = fuzz_home
    (plugin_dir / "plugin.json").write_bytes(raw)
    with no_spawn():
        check_load(home)


def _splice(data: bytes, at: int, insert: bytes) -> bytes:
    at %= len(data) + 1
    return data[:at] + insert + data[at:]


def test_fuzz_helper_mutations_do_change_manifests() -> None:
    # Guards the fuzzers above against silently testing only the unmodified manifest.
    assert mutate(copy.deepcopy(VALID), ("tools", 0, "args"), "x")["tools"][0]["args"] == "x"
    assert "name" not in mutate(copy.deepcopy(VALID), ("name",), DELETE)
    assert attrs.has(Manifest)
