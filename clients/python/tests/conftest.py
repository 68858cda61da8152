"""The test bed: a real buildlogd in front of the simulated upstream.

The session fixture starts ``$BUILDLOG_TESTBED`` (a built
clients/testbed binary) or else ``go run ./clients/testbed`` from the
repository root, reads the JSON line it prints once ready, and closes its
stdin at the end, which stops it and its buildlogd.

The tests import the library from this checkout (src/ and gen/), unless
BUILDLOG_CLIENT_INSTALLED=1 says to test the installed distribution.
"""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(PKG))

if os.environ.get("BUILDLOG_CLIENT_INSTALLED") != "1":
    sys.path[:0] = [os.path.join(PKG, "src"), os.path.join(PKG, "gen")]

READY_TIMEOUT = 600  # seconds: `go run` may build buildlogd first


class Testbed:
    """Where the test bed listens, and its control API."""

    def __init__(self, info):
        self.grpc_addr = info["grpc_addr"]
        self.http_addr = info["http_addr"]
        self.control = info["control"]
        self.token = info["token"]
        self.bad_token = info["bad_token"]

    def post(self, path, body):
        req = urllib.request.Request(self.control + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} {body}: {e.code} {e.read().decode(errors='replace')}") from None

    def content(self, record_id, task_name, level=""):
        q = urllib.parse.urlencode({"record_id": record_id, "task_name": task_name, "level": level})
        with urllib.request.urlopen(f"{self.control}/content?{q}", timeout=120) as resp:
            return resp.read()

    def stats(self):
        with urllib.request.urlopen(self.control + "/stats", timeout=120) as resp:
            return json.loads(resp.read())

    def add_log(self, size, task_name="stage1"):
        """A finished log of size bytes under a new record id."""
        record = str(uuid.uuid4())
        self.post("/log", {"record_id": record, "task_name": task_name, "size": size})
        return record


def _run_testbed(*buildlogd_args):
    """Starts a test bed, passing buildlogd_args on to its buildlogd (after
    ``--``), and yields its Testbed; stops it at the end."""
    cmd = [os.environ["BUILDLOG_TESTBED"]] if os.environ.get("BUILDLOG_TESTBED") else ["go", "run", "./clients/testbed"]
    if buildlogd_args:
        cmd += ["--", *buildlogd_args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(READY_TIMEOUT)
    if not line or not line[0].strip():
        proc.kill()
        proc.wait()
        pytest.fail(f"the test bed ({' '.join(cmd)}) printed no ready line; exit status {proc.poll()}")
    try:
        yield Testbed(json.loads(line[0]))
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def testbed():
    yield from _run_testbed()


#: The follow time limit of the follow_limit_testbed's buildlogd.
FOLLOW_MAX_DURATION = "300ms"


@pytest.fixture(scope="module")
def follow_limit_testbed():
    """A test bed of its own whose buildlogd ends every followed call after
    FOLLOW_MAX_DURATION with DEADLINE_EXCEEDED/FOLLOW_TIME_LIMIT."""
    yield from _run_testbed("--follow-max-duration", FOLLOW_MAX_DURATION)
