"""Optional-dependency and Java checks; the adapters fail with one clear line without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grouprl.envs import optional
from grouprl.envs.optional import (
    JavaMissingError,
    close_jvm_env,
    java_available,
    java_version,
    require,
    require_java,
)


def test_require_returns_the_module() -> None:
    assert require("json") is json


@pytest.mark.parametrize("module", ["textworld_express", "scienceworld"])
def test_missing_module_gives_one_line(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError) as err:
        require(module)
    assert str(err.value) == f"{module} is not installed: pip install 'grouprl[envs]'"
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"^grouprl_no_such_mod is not installed: "
                                          r"pip install 'grouprl\[games\]'$"):
        require("grouprl_no_such_mod", extra="games")


def test_broken_module_is_not_reported_as_missing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "grouprl_broken_pkg.py").write_text("import grouprl_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="grouprl_broken_pkg is installed but failed to import: "
                                          ".*grouprl_missing_dependency"):
        require("grouprl_broken_pkg")


@pytest.mark.parametrize(("module", "cls"), [
    ("textworld_express", "TextWorldExpressEnv"),
    ("scienceworld", "ScienceWorldEnv"),
])
def test_adapters_raise_the_one_line_error(monkeypatch: pytest.MonkeyPatch, module: str,
                                           cls: str) -> None:
    adapter = __import__(f"grouprl.envs.{module}", fromlist=[cls])
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"^{module} is not installed: "
                                          r"pip install 'grouprl\[envs\]'$"):
        getattr(adapter, cls)()


def _fake_java(directory: Path, banner: str) -> None:
    script = directory / "java"
    script.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    script.chmod(0o755)


def test_no_java_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java_available() is False and java_version() is None
    with pytest.raises(JavaMissingError, match=r"^ScienceWorld needs Java \(a JRE ≥ 11\) on PATH: "
                                               "no 'java' found"):
        require_java("ScienceWorld")


@pytest.mark.skipif(os.name != "posix", reason="uses a shell-script stand-in for java")
@pytest.mark.parametrize(("banner", "major", "ok"), [
    ('java version "1.8.0_292"', 8, False),
    ('openjdk version "11.0.2" 2019-01-15', 11, True),
    ('openjdk version "21" 2023-09-19', 21, True),
    ("something unexpected", None, True),
])
def test_java_version_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, banner: str,
                              major: int | None, ok: bool) -> None:
    _fake_java(tmp_path, banner)
    monkeypatch.setenv("PATH", str(tmp_path))
    optional._java_major.cache_clear()
    try:
        assert java_version() == major
        assert java_available() is ok
        if ok:
            require_java("TextWorldExpress")
        else:
            with pytest.raises(JavaMissingError, match=r"TextWorldExpress needs Java \(a JRE ≥ 11"
                                                       r"\) on PATH: found Java 8 at "):
                require_java("TextWorldExpress")
    finally:
        optional._java_major.cache_clear()


def test_adapter_checks_java_before_starting_a_jvm(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("textworld_express", reason="textworld_express is not installed")
    from grouprl.envs.textworld_express import TextWorldExpressEnv

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaMissingError, match="TextWorldExpress needs Java"):
        TextWorldExpressEnv("coin")


def test_close_jvm_env_waits_for_the_process() -> None:
    class Gateway:
        def __init__(self) -> None:
            self.java_process = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.stdin.readline()"],
                stdin=subprocess.PIPE)

    class FakeEnv:  # mimics the packages' wrappers: close() sends a newline to the JVM
        def __init__(self) -> None:
            self._gateway = Gateway()

        def close(self) -> None:
            self._gateway.java_process.stdin.write(b"\n")
            self._gateway.java_process.stdin.flush()

    env = FakeEnv()
    close_jvm_env(env)
    assert env._gateway.java_process.returncode == 0
    assert env._gateway.java_process.stdin.closed


def test_quiet_jvm_launch_adds_the_option_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from grouprl.envs.optional import JVM_QUIET_OPTION, quiet_jvm_launch

    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx512m")
    quiet_jvm_launch()
    quiet_jvm_launch()
    assert os.environ["JAVA_TOOL_OPTIONS"] == f"-Xmx512m {JVM_QUIET_OPTION}"
    monkeypatch.delenv("JAVA_TOOL_OPTIONS")
    quiet_jvm_launch()
    assert os.environ["JAVA_TOOL_OPTIONS"] == JVM_QUIET_OPTION
