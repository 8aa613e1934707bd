"""Plain option coercion (cli/_coercion.py) equals typer's pydantic coercion wherever it
answers, and a command that parses only plain values never imports pydantic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer._click import Context
from typer._coercion import build_runtime_param

from simfluence_cli.cli import app
from simfluence_cli.cli._coercion import _Slow, install, plain_coercion

GROUP = typer.main.get_command(app)
HERE = str(Path(__file__).resolve())


def _params():
    """(command name, parameter) for every typer parameter of every command and the group."""
    out = [("", p) for p in GROUP.params]
    for name, cmd in sorted(GROUP.commands.items()):
        ctx = Context(cmd)
        out += [(name, p) for p in cmd.get_params(ctx) if hasattr(p, "type_descriptor")]
    return out


PARAMS = _params()
ALPHABET = "0123456789-+.eE_ x/aAIi"
EXAMPLES = ["1", "0", "-0", "007", "1.", ".5", "1e3", "1E-2", "1_000", " 1", "inf", "nan",
            "1e400", "0.0", "-1", "2.5", "", "x", HERE, "/no/such/file", "-"]  # fmt: skip


def _values(desc):
    vals = [*EXAMPLES, Path(HERE), Path("/no/such/file"), 3, 2.5]  # defaults are objects
    ann = desc.annotation
    if isinstance(ann, type) and issubclass(ann, __import__("enum").Enum):
        for c in ann:
            vals += [c, c.value, c.value.upper(), c.value + " "]
    return vals


def _compare(cmd_name, p, value):
    desc = p.type_descriptor
    ctx = Context(GROUP.commands[cmd_name] if cmd_name else GROUP)
    plain = plain_coercion(desc.annotation, desc.parameter_info)
    if plain is None:
        return False
    try:
        got = plain(value, p, ctx)
    except _Slow:
        return False
    want = build_runtime_param(desc)._coerce_value(value, param=p, ctx=ctx)
    assert type(got) is type(want), (cmd_name, p.name, value)
    assert got == want or (got != got and want != want), (cmd_name, p.name, value, got, want)
    return True


def test_every_parameter_gets_the_plain_coercion():
    # all options of this CLI are plain types: none is left to pydantic
    missing = [(c, p.name) for c, p in PARAMS if plain_coercion(
        p.type_descriptor.annotation, p.type_descriptor.parameter_info) is None]  # fmt: skip
    assert missing == []


@pytest.mark.slow
def test_plain_coercion_equals_typer_on_examples():
    answered = 0
    for cmd_name, p in PARAMS:
        for v in _values(p.type_descriptor):
            answered += _compare(cmd_name, p, v)
    assert answered > 500  # the plain path does answer (ints, floats, strings, paths, choices)


@pytest.mark.slow
@settings(max_examples=300)
@given(
    st.sampled_from(range(len(PARAMS))),
    st.one_of(st.text(ALPHABET, max_size=12), st.floats().map(repr), st.integers().map(str)),
)
def test_plain_coercion_equals_typer(i, value):
    cmd_name, p = PARAMS[i]
    _compare(cmd_name, p, value)


def test_invalid_values_keep_typer_errors():
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["fit", "--method", "linearr"])
    assert r.exit_code == 2
    assert "'linearr' is not one of 'auto', 'linear', 'additive'" in r.output
    r = CliRunner().invoke(app, ["top", "--k", "x"])
    assert r.exit_code == 2
    assert "--k" in r.output and "valid integer" in r.output


def test_install_is_idempotent_per_parameter():
    p = next(p for c, p in PARAMS if c == "fit" and p.name == "method")
    assert install(p) is False  # installed when the command was built


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["info", "--store", "{s}"],
        ["info"],  # --store's default, a Path
        ["fit", "--store", "{s}", "--runs", "all", "--l2", "1", "-q"],
    ],
)
def test_parsing_plain_values_does_not_import_pydantic(tmp_path, argv):
    s = tmp_path / "store"
    code = (
        "import sys\nfrom simfluence_cli.cli import main\n"
        f"sys.argv = ['simfluence', *{[a.format(s=s) for a in argv]!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('pydantic' in sys.modules, 'typer._adapters' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SIMFLUENCE_STORE"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.stdout.split()[-2:] == ["False", "False"], out.stderr


@pytest.mark.sweep
@pytest.mark.parametrize("name", [c.name for c in app.registered_commands])
def test_one_command_app_answers_like_the_full_app(name):
    from typer.testing import CliRunner

    from simfluence_cli.cli import app_for

    for args in ([name, "--help"], ["-q", name, "--no-such-option"], [name, "--debug", "--help"]):
        one = app_for(args)
        assert one is not app and [c.name for c in one.registered_commands] == [name]
        a, b = CliRunner().invoke(one, args), CliRunner().invoke(app, args)
        assert (a.exit_code, a.output) == (b.exit_code, b.output)


def test_group_help_and_unknown_commands_use_the_full_app():
    from simfluence_cli.cli import app_for

    for args in ([], ["--help"], ["--help", "fit"], ["fitt"], ["--version"], ["--store", "x"]):
        assert app_for(args) is app
