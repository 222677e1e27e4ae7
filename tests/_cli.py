"""Running the `crosslayer` command line as a user types it, in a child process.

The console script is used when the one on PATH imports the crosslayer under test (CI installs the package);
otherwise `python -m crosslayer` with PYTHONPATH pointing at the package under test. Another copy is never tested
silently: a `crosslayer` on PATH that imports a different package is skipped over, and the child's package is
checked to be this one."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import crosslayer

PACKAGE_DIR = Path(crosslayer.__file__).resolve().parent
_WHERE = "import crosslayer, pathlib; print(pathlib.Path(crosslayer.__file__).resolve().parent)"


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_DIR.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


@functools.lru_cache(maxsize=1)
def command_prefix() -> tuple[str, ...]:
    """The console script if the one on PATH runs this package, else the module through this interpreter."""
    script = shutil.which("crosslayer")
    if script:
        interpreter = _script_interpreter(script)
        if interpreter and _package_of([interpreter]) == PACKAGE_DIR:
            return (script,)
    prefix = (sys.executable, "-m", "crosslayer")
    found = _package_of([sys.executable])
    assert found == PACKAGE_DIR, f"python -m crosslayer would run {found}, not the package under test {PACKAGE_DIR}"
    return prefix


def _script_interpreter(script: str) -> str | None:
    """The Python a console script runs: its shebang's, or for pip's /bin/sh trampoline (long paths) the one it execs."""
    import re

    with open(script, "rb") as handle:
        head = handle.read(1024).decode(errors="replace").splitlines()
    if not head or not head[0].startswith("#!"):
        return None
    interpreter = head[0][2:].strip().split()[0]
    if interpreter.endswith("/sh") and len(head) > 1:
        found = re.search(r"exec' (\S+)", head[1])
        return found.group(1) if found else None
    return interpreter


def _package_of(interpreter: list[str]) -> Path | None:
    # the console script's interpreter imports the package as it would with our environment (PYTHONPATH included):
    # only an installed copy that is this very package counts
    done = subprocess.run([*interpreter, "-c", _WHERE], capture_output=True, text=True, env=child_env(), timeout=60)
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def run_cli(*arguments, timeout: float = 300, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    """`crosslayer ARGUMENTS...` in a child process; stdout and stderr captured as text."""
    return subprocess.run([*command_prefix(), *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(env), **options)


def start_cli(*arguments, env: dict | None = None, **options) -> subprocess.Popen:
    return subprocess.Popen([*command_prefix(), *map(str, arguments)], env=child_env(env), **options)


def ok(done):
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def one_line_error(done, *expected):
    """Exit status 2 and the error as one line, last on stderr (after any progress bars and notices)."""
    assert done.returncode == 2, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:] and lines[-1].startswith("crosslayer "), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in lines[-1], done.stderr
    return lines[-1]
