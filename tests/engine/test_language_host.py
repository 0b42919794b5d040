"""Our language host (tools/pulumi-language-python), as the engine starts and stops it."""

from __future__ import annotations

import shutil
import signal
import subprocess


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_the_host_stops_on_sigint_even_when_its_caller_ignores_sigint() -> None:
    """The engine stops a plugin with SIGINT and kills it only 5 s later: a host that kept an inherited ignore
    held every preview and up of a background caller for those 5 s."""
    host = shutil.which("pulumi-language-python")
    assert host is not None, "scripts/pulumi-env.sh puts the engine's bin directory on PATH"
    with subprocess.Popen(
        [host, "127.0.0.1:1"], stdout=subprocess.PIPE, text=True, preexec_fn=ignore_sigint
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip().isdigit()  # serving: it printed its port
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("the language host ignored SIGINT") from None
