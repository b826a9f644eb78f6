"""bench/newcomer.sh's logic, without its twenty minutes: a dry run names every step it would time."""

from __future__ import annotations

import subprocess

from support import ROOT

SCRIPT = ROOT / "bench" / "newcomer.sh"


def test_the_script_parses_and_its_dry_run_names_each_timed_step():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    done = subprocess.run([str(SCRIPT), "--dry-run", "--port", "7999"], capture_output=True, text=True, check=True)
    steps = [line.split()[1:3] for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert steps == [["git", "clone"], ["git", "-C"], ["make", "-C"], ["setsid", "make"], ["curl", "--silent"]]
    assert f"checkout --quiet {head.stdout.strip()}" in done.stdout
    assert "run UI=0" in done.stdout and "http://127.0.0.1:7999/" in done.stdout
    assert "(dry run)" in done.stdout.splitlines()[-1]


def test_an_unknown_argument_is_one_line_and_status_2():
    done = subprocess.run([str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "newcomer.sh: unknown argument --fast (see --help)"
    ]
