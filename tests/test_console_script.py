"""The `anomflow` console script (flows/cli/entry.py) skips the interpreter teardown but keeps exit codes, output
and other exit handlers."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ANOMFLOW = str(Path(sys.executable).with_name("anomflow"))


def test_console_script_keeps_exit_code_and_output(tmp_path):
    ok = subprocess.run([ANOMFLOW, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "Usage" in ok.stdout
    bad = subprocess.run([ANOMFLOW, "run", "saa", "--dataset", "nope", "--root", str(tmp_path),
                          "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown dataset kind 'nope'" in bad.stderr


def test_other_exit_handlers_run_before_the_process_ends(tmp_path):
    """A handler registered after the entry module (as Prefect's and logging's are) still runs, and a command's
    buffered stdout still arrives."""
    marker = tmp_path / "handler-ran"
    script = textwrap.dedent(f"""
        import atexit, sys
        import flows.cli.entry as entry
        atexit.register(lambda: open({str(marker)!r}, "w").write("yes"))
        import flows.cli.main as cli
        sys.argv = ["anomflow", "--help"]
        entry.main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "Usage" in done.stdout
    assert marker.read_text() == "yes"


def test_an_uncaught_exception_takes_the_usual_path(tmp_path):
    script = "import flows.cli.entry as e, flows.cli.main as m\nm.app = None\ne.main()\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1 and "TypeError" in done.stderr
