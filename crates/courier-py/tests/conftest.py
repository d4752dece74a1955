"""Helpers for the Python tests: protocols, and Python scripts run as
processes whose output lines a test waits for (never sleeps)."""

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SEED = HERE / "seed"

#: The shm transport is built on Linux only.
HAS_SHM = sys.platform.startswith("linux")

#: Every transport, as the conformance suite runs them.
PROTOCOLS = ["tcp", "unix", "quic"] + (["shm"] if HAS_SHM else [])

#: For the tests that name shm themselves: skipped, saying so, elsewhere.
needs_shm = pytest.mark.skipif(not HAS_SHM, reason="the shm transport is Linux-only")

#: A guard against a hang, never a pass/fail threshold: a test that waits
#: this long has failed anyway.
GUARD_S = 60

#: Set by `.ci/run`: there every test must run, so a test that would be
#: skipped (NumPy missing, say) fails instead, saying why.
NO_SKIP_ENV = "COURIER_TESTS_NO_SKIP"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under `COURIER_TESTS_NO_SKIP=1`, a skip is a failure: a test that did
    not run must not look as if it had passed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(NO_SKIP_ENV) == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} was skipped ({reason}), but {NO_SKIP_ENV}=1 asks every test to run"


def script_env(protocol=None):
    """The environment of a child Python: unbuffered output (so a test sees
    each line when it is printed), and the protocol override if asked."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COURIER_PROTOCOL_OVERRIDE", None)
    env.pop("COURIER_PROTOCOLS", None)
    if protocol is not None:
        env["COURIER_PROTOCOL_OVERRIDE"] = protocol
    return env


class Script:
    """A Python script run as a child process, its stdout read line by line."""

    def __init__(self, path, *args, protocol=None):
        self.proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=script_env(protocol),
        )
        self.lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr = None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self):
        try:
            line = self.lines.get(timeout=GUARD_S)
        except queue.Empty:
            raise AssertionError(f"no output within {GUARD_S} s; stderr: {self.stderr()}")
        if line is None:
            raise AssertionError(f"the script ended (status {self.wait()}); stderr: {self.stderr()}")
        return line

    def expect_line(self, prefix):
        line = self.next_line()
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}; stderr: {self.stderr()}"
        return line[len(prefix):]

    def remaining_lines(self):
        out = []
        while True:
            line = self.lines.get(timeout=GUARD_S)
            if line is None:
                return out
            out.append(line)

    def wait(self):
        return self.proc.wait(timeout=GUARD_S)

    def stderr(self):
        if self._stderr is None:
            if self.proc.poll() is None:
                return "(still running)"
            self._stderr = self.proc.stderr.read()
        return self._stderr

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def scripts():
    """Starts scripts; kills those still running when the test ends."""
    started = []

    def start(path, *args, protocol=None):
        s = Script(path, *args, protocol=protocol)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()
        for stream in (s.proc.stdout, s.proc.stderr):
            stream.close()


def doc_example(caption):
    """The Python block that follows ``caption`` in docs/python.md."""
    text = (HERE.parents[2] / "docs" / "python.md").read_text()
    after = text.split(caption, 1)[1]
    return after.split("```python\n", 1)[1].split("```\n", 1)[0]


def run_script(path, *args, protocol=None):
    """Runs a script to its end: (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, str(path), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=script_env(protocol),
        timeout=GUARD_S,
    )
    return done.returncode, done.stdout, done.stderr
