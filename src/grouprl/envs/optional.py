"""Optional dependencies of the environment adapters, and the Java check.

The text-game adapters (:mod:`grouprl.envs.textworld_express`, :mod:`grouprl.envs.scienceworld`)
import their game package only when an environment is made, through :func:`require`, so that
``import grouprl.envs`` works without them. Both games run on a JVM started through py4j, which
looks up ``java`` on ``PATH``; :func:`require_java` checks for it first so that a missing JRE gives
one clear line instead of a py4j traceback.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from types import ModuleType
from typing import Any

__all__ = [
    "MIN_JAVA_VERSION",
    "JavaMissingError",
    "require",
    "java_version",
    "java_available",
    "require_java",
    "close_jvm_env",
]

MIN_JAVA_VERSION = 11
"""Oldest Java major version the bundled TextWorldExpress and ScienceWorld jars run on."""


class JavaMissingError(RuntimeError):
    """No (recent enough) ``java`` on ``PATH`` for a JVM-backed environment."""


def require(module: str, extra: str = "envs") -> ModuleType:
    """Import and return the optional dependency ``module``.

    Raises ``ImportError`` with the one line ``"<module> is not installed: pip install
    'grouprl[<extra>]'"`` when the module itself is missing. When the module is installed but one
    of *its* imports fails, the message says so and names the failing import instead.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (missing == module or module.startswith(missing + ".")):
            raise ImportError(
                f"{module} is not installed: pip install 'grouprl[{extra}]'") from None
        raise ImportError(f"{module} is installed but failed to import: {err}") from err


_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


@lru_cache(maxsize=8)
def _java_major(java: str) -> int | None:
    """Major version printed by ``<java> -version`` (``1.8`` counts as 8), ``None`` if unknown."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(proc.stderr + proc.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def java_version() -> int | None:
    """Major version of the ``java`` on ``PATH``, or ``None`` when there is none or it is unclear.

    The answer is cached per resolved ``java`` path (one ``java -version`` call each).
    """
    java = shutil.which("java")
    return None if java is None else _java_major(java)


def java_available(min_version: int = MIN_JAVA_VERSION) -> bool:
    """Whether a ``java`` of at least ``min_version`` is on ``PATH``.

    A ``java`` whose version cannot be read counts as available (py4j will report any failure).
    """
    java = shutil.which("java")
    if java is None:
        return False
    major = _java_major(java)
    return major is None or major >= min_version


def require_java(package: str) -> None:
    """Raise :class:`JavaMissingError` unless :func:`java_available`; ``package`` names the game.

    The message is one line: ``"<package> needs Java (a JRE ≥ 11) on PATH: ..."``.
    """
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            f"{package} needs Java (a JRE ≥ {MIN_JAVA_VERSION}) on PATH: no 'java' found; "
            "install one, e.g. 'apt-get install default-jre-headless'")
    major = _java_major(java)
    if major is not None and major < MIN_JAVA_VERSION:
        raise JavaMissingError(
            f"{package} needs Java (a JRE ≥ {MIN_JAVA_VERSION}) on PATH: found Java {major} "
            f"at {java}")
    quiet_jvm_launch()


JVM_QUIET_OPTION = "-XX:-UsePerfData"


def quiet_jvm_launch() -> None:
    """Add ``-XX:-UsePerfData`` to ``JAVA_TOOL_OPTIONS`` for the JVMs this process launches.

    py4j reads the gateway's port from the first line the JVM prints on stdout. With many JVMs
    starting at once, HotSpot can print a warning there first ("Cannot use file
    /tmp/hsperfdata_root/N because it is locked by another process"), and py4j's ``int()`` of
    that line fails the env's construction. Without perf data no such file is used. The JVM's
    "Picked up JAVA_TOOL_OPTIONS" notice goes to stderr, which py4j discards.
    """
    current = os.environ.get("JAVA_TOOL_OPTIONS", "")
    if JVM_QUIET_OPTION not in current.split():
        os.environ["JAVA_TOOL_OPTIONS"] = f"{current} {JVM_QUIET_OPTION}".strip()


def close_jvm_env(env: Any, timeout: float = 10.0) -> None:
    """Close a py4j-backed package env (its ``close()``) and wait until its JVM has exited.

    The TextWorldExpress and ScienceWorld wrappers close again from ``__del__``; once the JVM is
    gone that second close does nothing, while a JVM still shutting down would make it write to
    a closed pipe. A JVM still alive after ``timeout`` seconds is killed; its pipes and the env's
    temporary directories are closed.
    """
    try:
        env.close()
    except OSError:  # the JVM went away first (broken pipe)
        pass
    process = getattr(getattr(env, "_gateway", None), "java_process", None)
    if process is None:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    for value in list(vars(env).values()):  # ScienceWorld's object-tree scratch directory
        if isinstance(value, tempfile.TemporaryDirectory):
            value.cleanup()
