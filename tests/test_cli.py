"""The command line as a user meets it: exit codes and what it prints."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "missingglow", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_reports_a_sound_install():
    result = run_cli("check")
    assert result.returncode == 0, result.stderr
    assert "inverse(forward(x))" in result.stdout and result.stdout.strip().endswith("ok")
    assert "Traceback" not in result.stderr


def test_check_names_the_build_of_the_cpu_coupling_loops():
    from missingglow.flow import ops

    if not ops.AVAILABLE:
        pytest.skip(str(ops.WHY_UNAVAILABLE))
    result = run_cli("check")
    assert any(
        f"CPU coupling loops: {name}" in result.stdout for name in ("avx512", "avx2", "portable")
    )


def test_unknown_command_is_one_clear_error():
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "No such command" in result.stderr


def test_a_bad_value_is_one_line_not_a_usage_block():
    result = run_cli("sample", "-t", "0.5,-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: Invalid value for '-t' / '--temperature': "
        "temperature must be a finite number of 0 or more, not -1"
    )


def test_impute_help_says_what_alpha_alone_means():
    result = run_cli("impute", "--help")
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "`impute --alpha 0.6 img.png` by the paper's α-imputation" in help_text
    assert "[alpha when --alpha is given, else invert]" in help_text
