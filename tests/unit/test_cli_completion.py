"""Shell completion of `kubectl cellar`: the bash script (run by a real bash) and kubectl's plugin protocol."""

from __future__ import annotations

import subprocess

import pytest

from cli.__main__ import main
from cli.completion import candidates, script
from cli.parser import build_parser


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (
            [""],
            {
                "status",
                "backup",
                "archive",
                "suspend",
                "resume",
                "logs",
                "list",
                "restore",
                "adopt",
                "unarchive",
                "completion",
            },
        ),
        (["st"], {"status"}),
        (["-n", "shop", "sta"], {"status"}),  # a flag's value is no verb
        (["status", "--a"], {"--all-namespaces"}),
        (["backup", "orders", "--w"], {"--wait"}),
        (["logs", "x", "--p"], {"--previous"}),
        (["-n", ""], set()),  # a namespace: kubectl's own completion is not ours to guess
    ],
)
def test_candidates_follow_the_parser(words: list[str], expected: set[str]) -> None:
    assert set(candidates(build_parser(), words)) == expected


@pytest.mark.parametrize(
    ("line", "expected"), [("kubectl-cellar sta", "status"), ("kubectl-cellar list o --di", "--direct")]
)
def test_the_bash_script_completes_in_bash(line: str, expected: str) -> None:
    program = f"""{script("bash", build_parser())}
COMP_WORDS=({line}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_kubectl_cellar
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [expected]


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (
        "status",
        "backup",
        "archive",
        "suspend",
        "resume",
        "logs",
        "list",
        "restore",
        "adopt",
        "unarchive",
        "completion",
    ):
        assert main([verb, "--help"]) == 0
        assert f"usage: kubectl cellar {verb}" in capsys.readouterr().out


def test_a_bad_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 2
    assert "invalid choice" in capsys.readouterr().err
