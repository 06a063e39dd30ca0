"""Fetch the jars of local components from Maven Central, once, into the user cache.

The cache lives outside ``KAPPA_HOME`` (``$XDG_CACHE_HOME/kappa`` or ``~/.cache/kappa``) so
every state directory, including the temporary ones tests make, shares one download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from kappa.errors import FetchError, ToolMissing

__all__ = [
    "APICURIO_VERSION",
    "KAFKA_VERSION",
    "cache_dir",
    "java",
    "kafka_classpath",
    "registry_jar",
]

KAFKA_VERSION = "4.1.1"
APICURIO_VERSION = "3.0.9"
_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def cache_dir() -> Path:
    """The user-wide cache for fetched jars."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kappa"


def java() -> str:
    """Path of a Java 17+ runtime: ``$JAVA_HOME/bin/java`` or ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ToolMissing(
            "java not found: install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return found


def _mvn(args: list[str], what: str) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise ToolMissing(f"mvn not found: install Maven to fetch {what} (Debian: apt-get install maven)")
    proc = subprocess.run([mvn, "-q", "-B", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ERROR" in ln][:3]
        raise FetchError(
            f"Maven could not fetch {what} from Maven Central (exit {proc.returncode}): "
            + (" | ".join(lines) or "no error text")
            + " -- check network access to Maven Central or a mirror in ~/.m2/settings.xml"
        )


def kafka_classpath() -> str:
    """The broker's classpath, fetched with ``deploy/kafka/pom.xml`` on first use."""
    target = cache_dir() / f"kafka-{KAFKA_VERSION}"
    done = target / ".complete"
    if not done.exists():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _mvn(
            [
                "-f",
                str(_DEPLOY / "kafka" / "pom.xml"),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ],
            f"Apache Kafka {KAFKA_VERSION}",
        )
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.touch()
    return str(target / "*")


def registry_jar() -> Path:
    """The Apicurio Registry runner jar, fetched and unpacked on first use."""
    target = cache_dir() / f"apicurio-registry-{APICURIO_VERSION}"
    done = target / ".complete"
    jar = target / f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
    if not done.exists():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _mvn(
            [
                "dependency:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all",
                f"-DoutputDirectory={tmp}",
            ],
            f"Apicurio Registry {APICURIO_VERSION}",
        )
        archive = next(tmp.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        archive.unlink()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.touch()
    if not jar.exists():
        raise FetchError(f"{jar} missing after unpacking Apicurio; delete {target} and retry")
    return jar
