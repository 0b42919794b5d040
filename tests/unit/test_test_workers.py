"""What lets `make test` run on parallel workers: disjoint ports per worker, and whole stacks per worker."""

from __future__ import annotations

import pytest

from testbed import support


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_draw_ports_from_disjoint_blocks_and_runs_stay_in_their_block(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    drawn: dict[int, set[int]] = {}
    for index in range(workers):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
        monkeypatch.setattr(support, "_handed_out", set())  # each worker is its own process
        starts = [support.free_port(run=8) for _ in range(40)]
        drawn[index] = {port for start in starts for port in range(start, start + 8)}
        assert {port // support.PORT_BLOCK % workers for port in drawn[index]} == {index}
    near = {port + offset for port in drawn[0] for offset in (-1, 0, 1)}
    assert all(near.isdisjoint(drawn[other]) for other in range(1, workers))


def test_a_run_longer_than_the_room_at_the_end_of_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        support.free_port(run=support.RUN_ROOM + 1)


def test_modules_sharing_a_session_stack_are_one_group_and_long_groups_come_first(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """import pytest

from testbed.workers import group_for_workers


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    group_for_workers(items)


@pytest.fixture(scope="session")
def shared_stack():
    return object()
"""
    )
    pytester.makeini("[pytest]\nmarkers =\n    long: x\n    e2e: x\n")
    pytester.makepyfile(
        test_a="def test_alone(): pass\n",
        test_b="def test_one(shared_stack): pass\ndef test_two(): pass\n",
        test_c="import pytest\npytestmark = pytest.mark.long\ndef test_long(): pass\n",
        test_d="def test_also(shared_stack): pass\n",
    )
    result = pytester.runpytest("--co", "-q", "-p", "no:xdist")
    order = [line.split("::")[0] for line in result.outlines if "::" in line]
    assert order == ["test_c.py", "test_a.py", "test_b.py", "test_b.py", "test_d.py"]
    groups = pytester.runpytest("-p", "xdist", "-n", "2", "--dist", "loadgroup", "-v")
    assert groups.ret == 0
    lines = [line for line in groups.outlines if "PASSED" in line]
    assert {line.split("@")[-1].split()[0] for line in lines if "test_b.py" in line or "test_d.py" in line} == {
        "shared:shared_stack"
    }
