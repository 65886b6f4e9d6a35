"""Quiet by default: library output (Python warnings, absl, TensorFlow's C++ lines, child
processes) goes to a log file; the terminal gets progress, results and the log's path."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMAML = os.path.join(os.path.dirname(sys.executable), "limaml")
LOG_LINE = re.compile(r"^\[limaml\] library warnings and logs \((\d+) lines\): (\S+) ")


def _env(tmp_path) -> dict:
    env = dict(os.environ, LIMAML_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def test_library_log_takes_every_kind_of_stderr_output(tmp_path):
    log = tmp_path / "logs" / "x.log"
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys, warnings
        from absl import logging as absl_logging
        from limaml.console import LibraryLog, console
        lib = LibraryLog({str(log)!r}).start()
        print("[x] progress 1", file=console(), flush=True)
        warnings.warn("python-warning-line", DeprecationWarning if False else UserWarning)
        absl_logging.warning("absl-warning-line")
        logging.getLogger("tensorflow").warning("tf-logger-line")
        os.write(2, b"c++-fd2-line\\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child-line\\\\n')"])
        print("[x] result", flush=True)
        lib.stop()
        print("after-stop-line", file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["[x] progress 1", "after-stop-line"], done.stderr
    assert done.stdout.splitlines() == ["[x] result"]
    text = log.read_text()
    for needle in ("python-warning-line", "absl-warning-line", "tf-logger-line", "c++-fd2-line",
                   "child-line"):
        assert needle in text, f"{needle!r} missing from the library log:\n{text}"
    assert "[x] progress" not in text and "after-stop-line" not in text


def test_cli_command_prints_no_library_lines_and_logs_them(tmp_path):
    """``limaml kubeflow compile`` imports TFX and TensorFlow (C++ factory lines, absl)."""
    spec = tmp_path / "spec.json"
    done = subprocess.run([LIMAML, "kubeflow", "compile", "--output", str(spec)], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"[kubeflow] pipeline spec written to {spec}"]
    err = done.stderr.splitlines()
    # the only stderr line: where the library output went (none at all if a machine's stack is silent)
    assert len(err) <= 1 and all(LOG_LINE.match(line) for line in err), done.stderr
    logs = list((tmp_path / "cache" / "logs").glob("kubeflow-compile-*.log"))
    if err:
        lines, path = LOG_LINE.match(err[0]).groups()
        assert [str(p) for p in logs] == [path]
        text = open(path).read()
        assert len(text.splitlines()) == int(lines) > 0
        assert not any(line.startswith("[kubeflow]") for line in text.splitlines())
    else:
        assert logs == []  # an empty log is removed


def test_cli_verbose_shows_library_lines_live(tmp_path):
    """The library log's content is what ``--verbose`` prints; with it no log is written."""
    script = textwrap.dedent("""
        import sys, warnings
        from limaml import cli
        from limaml.console import console
        def noisy(args):
            warnings.warn("noisy-library-line")
            print("[noisy] done", file=console())
            return 0
        parser = cli.build_parser
        def build():
            p = parser()
            sub = [a for a in p._actions if a.dest == "command"][0]
            sub.add_parser("noisy").set_defaults(func=noisy, log_folder="out", out=sys.argv[1])
            return p
        cli.build_parser = build
        sys.exit(cli.main(sys.argv[2:]))
    """)
    out = tmp_path / "run"
    quiet = subprocess.run([sys.executable, "-c", script, str(out), "noisy"], capture_output=True,
                           text=True, env=_env(tmp_path), timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert lines[0] == "[noisy] done" and len(lines) == 2, quiet.stderr
    count, path = LOG_LINE.match(lines[1]).groups()
    assert os.path.dirname(path) == str(out / "logs")
    assert "noisy-library-line" in open(path).read()
    loud = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run2"), "noisy", "--verbose"],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "noisy-library-line" in loud.stderr and "[noisy] done" in loud.stderr
    assert not (tmp_path / "run2").exists()
