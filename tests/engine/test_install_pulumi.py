"""scripts/install-pulumi: cache hits, and clear one-line errors that leave the cache untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "install-pulumi"
PINNED = next(
    line.split("==")[1].strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("pulumi==")
)


def path_without_engine() -> str:
    """PATH minus the project's engine cache, wherever THORBIS_PULUMI_CACHE put it."""
    cache = os.environ["THORBIS_PULUMI_CACHE"]
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(cache))


def run(env: dict[str, str], script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)


def bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only the basic tools the script needs, plus those named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    basics = "bash sed grep tr date mktemp dirname cat rm mkdir sort tail comm sha256sum cut".split()  # noqa: SIM905
    for tool in (*basics, *tools):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_a_warm_cache_is_a_hit_that_builds_nothing() -> None:
    result = run(dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "nothing to build" in result.stderr
    assert "building" not in result.stderr


def test_no_go_toolchain_is_one_clear_line_and_no_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"HOME": str(tmp_path), "PATH": bare_path(tmp_path), "THORBIS_PULUMI_CACHE": str(cache)}
    result = run(env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "no Go toolchain" in errors[0], result.stderr
    assert not (cache / f"v{PINNED}" / "bin").exists()


def test_a_pulumi_of_another_version_on_path_is_named_not_used(tmp_path: Path) -> None:
    impostor = tmp_path / "bin" / "pulumi"
    path = bare_path(tmp_path)
    impostor.write_text("#!/bin/sh\necho v3.1.0\n")
    impostor.chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": path, "THORBIS_PULUMI_CACHE": str(tmp_path / "cache")}
    result = run(env)
    assert f"found pulumi v3.1.0 at {impostor}, but this project needs v{PINNED}" in result.stderr
    assert result.returncode != 0  # no Go on this PATH, so it cannot build: it must not settle for v3.1.0


def test_a_proxy_that_refuses_leaves_the_previous_cache_untouched(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    previous = cache / f"v{PINNED}" / "bin"
    previous.mkdir(parents=True)
    (previous / "pulumi").write_text("#!/bin/sh\necho previous-build\n")
    env = {
        **os.environ,
        "THORBIS_PULUMI_CACHE": str(cache),
        "GOPROXY": "off",
        "GOMODCACHE": str(tmp_path / "empty-modcache"),
        "GOFLAGS": "-mod=mod",
    }
    env["PATH"] = path_without_engine()
    result = run(env)
    assert result.returncode != 0
    assert "ERROR" in result.stderr and "proxy" in result.stderr
    assert (previous / "pulumi").read_text() == "#!/bin/sh\necho previous-build\n"
    assert not list(cache.glob(".build-*"))


def test_an_unserved_sdk_pin_names_the_version_to_pin_instead(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, clone / "scripts" / "install-pulumi")
    shutil.copytree(ROOT / "tools", clone / "tools")
    (clone / "requirements.txt").write_text("pulumi==3.272.0\n")
    env = {**os.environ, "THORBIS_PULUMI_CACHE": str(tmp_path / "cache")}
    env["PATH"] = path_without_engine()
    result = run(env, clone / "scripts" / "install-pulumi")
    assert result.returncode != 0
    assert "pulumi v3.272.0 has no pkg/v3 and sdk/v3 tags" in result.stderr
    assert f"pin pulumi=={PINNED}" in result.stderr
