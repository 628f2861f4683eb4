"""Firmware = a release of this Python package; install beside the running one, switch, confirm or roll back.

Layout under ``root`` (production: /opt/chargepoint)::

    releases/<version>/venv/            its own venv, made like the running one (see RunningEnvironment)
    releases/<version>/artifact/<file>  the wheel/sdist it was installed from
    releases/<version>/release.json     version, install time, artifact sha256
    releases/<version>/.complete        written last: a release without it is half-installed
    current  -> releases/<version>      what systemd starts (current/venv/bin/chargepoint run ...)
    previous -> releases/<version>      the release before, the rollback target
    firmware-state.json                 pending confirmation, install order, rollback report

Both links are replaced atomically (a temporary symlink renamed over the old one), so a power cut leaves
either the old or the new link, never none.  A freshly switched release must confirm its health
(BootNotification accepted, OCPP 1.6 §4.2) before a deadline; otherwise the next ``check_boot`` (or the
in-process watchdog of :class:`FirmwareUpdater`) switches back and the following boot reports
FirmwareStatusNotification InstallationFailed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.parser
import fcntl
import gzip
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from chargepoint.firmware.download import (
    DEFAULT_MAX_BYTES,
    DiskUsage,
    DownloadFailed,
    Sleep,
    download,
    safe_url,
)

log = logging.getLogger(__name__)

PROJECT_NAME = "pi-chargepoint"
_WHEEL_RE = re.compile(
    r"^pi_chargepoint-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$", re.I
)
_SDIST_RE = re.compile(r"^pi[-_]chargepoint-(?P<version>[^/]+?)\.tar\.gz$", re.I)
#: PEP 440 characters only, starting with a digit: the version is also a directory name.
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!_]*$")

BootOutcome = Literal["confirmed", "rolled_back", "pending", "none"]
#: (venv directory to create, artifact to install, expected version) -> None; raises on failure.
VenvInstaller = Callable[[Path, Path, str], None]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def utc_now() -> datetime:
    return datetime.now(UTC)


class InvalidRelease(Exception):
    """The artifact is not a release of this project (message says why)."""


class InstallFailed(Exception):
    """Installing, switching or rolling back did not complete; the running release is untouched."""


class RollbackFailed(InstallFailed):
    pass


# ---------------------------------------------------------------------------------------------------------
# Artifact verification


@dataclass(frozen=True)
class Artifact:
    path: Path
    kind: Literal["wheel", "sdist"]
    version: str


def _check_metadata(text: str, source: str, version: str) -> None:
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    name = msg.get("Name")
    if not name or _canonical(name) != PROJECT_NAME:
        raise InvalidRelease(f"{source} names the package {name!r}, not {PROJECT_NAME!r}")
    if (msg.get("Version") or "").strip() != version:
        raise InvalidRelease(f"{source} says version {msg.get('Version')!r} but the file name says {version!r}")


def verify_artifact(path: Path) -> Artifact:
    """Accept only a wheel ``pi_chargepoint-<ver>-*.whl`` or an sdist ``pi_chargepoint-<ver>.tar.gz`` whose
    metadata names this project and the same version, and whose archive reads back without error."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRelease(f"{path} does not exist or is not a file")
    name = path.name
    if m := _WHEEL_RE.match(name):
        version = m["version"]
        kind: Literal["wheel", "sdist"] = "wheel"
    elif m := _SDIST_RE.match(name):
        version = m["version"]
        kind = "sdist"
    else:
        raise InvalidRelease(
            f"{name!r} is not a release of {PROJECT_NAME}: expected pi_chargepoint-<version>-*.whl "
            "or pi_chargepoint-<version>.tar.gz"
        )
    if not _VERSION_RE.match(version):
        raise InvalidRelease(f"version {version!r} in {name!r} is not a valid version string")
    if kind == "wheel":
        _verify_wheel(path, version)
    else:
        _verify_sdist(path, version)
    return Artifact(path, kind, version)


def _verify_wheel(path: Path, version: str) -> None:
    if not zipfile.is_zipfile(path):
        raise InvalidRelease(f"{path.name} is not a valid zip archive (corrupt or truncated wheel)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise InvalidRelease(f"{path.name} is corrupt: member {bad!r} fails its CRC check")
            names = zf.namelist()
            meta = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(meta) != 1:
                raise InvalidRelease(f"{path.name} has {len(meta)} .dist-info/METADATA files, expected 1")
            if not any(n.startswith("chargepoint/") for n in names):
                raise InvalidRelease(f"{path.name} does not contain the chargepoint package")
            _check_metadata(zf.read(meta[0]).decode("utf-8", "replace"), f"{path.name} METADATA", version)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise InvalidRelease(f"{path.name} is corrupt: {e}") from None


def _verify_sdist(path: Path, version: str) -> None:
    try:
        # tarfile stops at the end-of-archive blocks; read the gzip stream to its end so that a truncated
        # file or a wrong CRC/length trailer is noticed.
        with gzip.open(path, "rb") as gz:
            while gz.read(1 << 20):
                pass
        with tarfile.open(path, "r:gz") as tf:
            pkg_info: str | None = None
            top: set[str] = set()
            for member in tf:
                parts = member.name.split("/")
                if member.name.startswith("/") or ".." in parts:
                    raise InvalidRelease(f"{path.name} contains an unsafe path {member.name!r}")
                top.add(parts[0])
                if len(parts) == 2 and parts[1] == "PKG-INFO":
                    f = tf.extractfile(member)
                    pkg_info = f.read().decode("utf-8", "replace") if f else None
                elif member.isfile():
                    f = tf.extractfile(member)
                    if f:
                        while f.read(65536):
                            pass
    except (tarfile.TarError, OSError, EOFError, UnicodeError, zlib.error) as e:
        raise InvalidRelease(f"{path.name} is not a valid tar.gz archive (corrupt or truncated): {e}") from None
    if len(top) != 1:
        raise InvalidRelease(f"{path.name} must contain exactly one top-level directory, has {sorted(top)}")
    if pkg_info is None:
        raise InvalidRelease(f"{path.name} has no PKG-INFO in its top-level directory")
    _check_metadata(pkg_info, f"{path.name} PKG-INFO", version)


def release_file_name(path: Path) -> str:
    """The file name a release needs (pip reads the version and tags from it), taken from its content.

    A central system may serve the file as ``…/download?id=42``: what it is comes from the bytes, a wheel
    (zip: ``*.dist-info/METADATA`` and ``WHEEL`` tags) or an sdist (gzip: ``<top>/PKG-INFO``), never from the
    URL. The full checks (CRCs, members, metadata) follow in :func:`verify_artifact` on the renamed file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise InvalidRelease(f"the firmware file cannot be read: {e.strerror}") from None
    if magic.startswith(b"PK"):
        return _wheel_file_name(path)
    if magic.startswith(b"\x1f\x8b"):
        return _sdist_file_name(path)
    raise InvalidRelease(f"the firmware file is neither a wheel (zip) nor an sdist (tar.gz) of {PROJECT_NAME} "
                         f"({path.stat().st_size} bytes starting {magic!r})")


def _release_identity(text: str, source: str) -> str:
    """The version named by ``text`` (METADATA / PKG-INFO), which must be this project's."""
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    name = msg.get("Name")
    if not name or _canonical(name) != PROJECT_NAME:
        raise InvalidRelease(f"{source} names the package {name!r}, not {PROJECT_NAME!r}")
    version = (msg.get("Version") or "").strip()
    if not _VERSION_RE.match(version):
        raise InvalidRelease(f"{source} gives version {version!r}, which is not a valid version string")
    return version


def _wheel_file_name(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            meta = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(meta) != 1:
                raise InvalidRelease(f"the firmware file (a zip) has {len(meta)} .dist-info/METADATA files: "
                                     f"not a wheel of {PROJECT_NAME}")
            version = _release_identity(zf.read(meta[0]).decode("utf-8", "replace"), "the wheel's METADATA")
            wheel_info = meta[0].rsplit("/", 1)[0] + "/WHEEL"
            tags = (email.parser.Parser().parsestr(zf.read(wheel_info).decode("utf-8", "replace"))
                    .get_all("Tag") or []) if wheel_info in names else []
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise InvalidRelease(f"the firmware file is not a valid zip archive (corrupt or truncated wheel): {e}") \
            from None
    parts = [t.strip().split("-") for t in tags]
    if not parts or any(len(p) != 3 for p in parts):
        raise InvalidRelease(f"the wheel has no valid Tag in {wheel_info}")
    # the compressed tag set of the wheel file name (PEP 425): each part's values joined by "."
    py, abi, plat = (".".join(sorted({p[i] for p in parts})) for i in range(3))
    return f"pi_chargepoint-{version}-{py}-{abi}-{plat}.whl"


def _sdist_file_name(path: Path) -> str:
    try:
        with tarfile.open(path, "r:gz") as tf:
            for member in tf:
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile():
                    f = tf.extractfile(member)
                    text = f.read(65536).decode("utf-8", "replace") if f else ""
                    return f"pi_chargepoint-{_release_identity(text, 'the sdist PKG-INFO')}.tar.gz"
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise InvalidRelease(f"the firmware file is not a valid tar.gz archive (corrupt or truncated): {e}") \
            from None
    raise InvalidRelease(f"the firmware file (a tar.gz) has no <dir>/PKG-INFO: not an sdist of {PROJECT_NAME}")


def stage_release(path: Path) -> Artifact:
    """Rename a downloaded file to the name its content calls for and verify it (:func:`verify_artifact`)."""
    path = Path(path)
    named = path.with_name(release_file_name(path))
    if named != path:
        os.replace(path, named)
    try:
        return verify_artifact(named)
    except BaseException:
        named.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Venv creation (injectable: tests use a fast fake)


_SMOKE_TEST = """
import importlib.metadata as m, chargepoint
print(m.version('pi-chargepoint'))
try:
    from packaging.requirements import Requirement
except ImportError:
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        Requirement = None
for spec in (m.requires('pi-chargepoint') or []) if Requirement else []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({'extra': ''}):
        continue
    try:
        have = m.version(req.name)
    except m.PackageNotFoundError:
        print(f'{req.name} is not installed (needs {spec})')
        continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        print(f'{req.name} {have} does not satisfy {spec}')
"""


def _venv_site_packages(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    return Path(out)


def artifact_requirements(path: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a release artifact (wheel METADATA or sdist PKG-INFO), extras included."""
    text = ""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            meta = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if meta:
                text = zf.read(meta[0]).decode("utf-8", "replace")
    else:
        with contextlib.suppress(tarfile.TarError, OSError, EOFError, zlib.error), tarfile.open(path, "r:gz") as tf:
            for member in tf:
                if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                    f = tf.extractfile(member)
                    text = f.read().decode("utf-8", "replace") if f else ""
                    break
    return email.parser.Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []


def _requirement_name(spec: str) -> str | None:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return _canonical(m[1]) if m else None


@dataclass(frozen=True)
class RunningEnvironment:
    """The Python environment the controller itself runs in, which a new release's venv must reproduce.

    deploy/install.sh makes each release's venv with ``python3 -m venv --system-site-packages`` (Debian's
    gpiozero, lgpio, pyscard, systemd) and pip-installs the other dependencies *into that venv*. A venv made
    from the base interpreter alone would therefore lack ocpp, websockets, pymodbus ...: the new release
    gets the base interpreter and the system-site setting of the running venv, and the running venv's own
    copies of the dependencies (hard links: no space, no network, the versions this controller runs with).
    """

    base_python: str
    system_site: bool
    #: Site directories of the base interpreter: what a venv with system_site sees by itself.
    base_site_dirs: frozenset[Path]

    @classmethod
    def current(cls) -> RunningEnvironment:
        base = getattr(sys, "_base_executable", None) or sys.executable
        system_site = True
        if sys.prefix != sys.base_prefix:
            cfg = Path(sys.prefix) / "pyvenv.cfg"
            with contextlib.suppress(OSError):
                for line in cfg.read_text().splitlines():
                    key, _, value = line.partition("=")
                    if key.strip().lower() == "include-system-site-packages":
                        system_site = value.strip().lower() == "true"
        import site

        dirs = frozenset(Path(d).resolve() for d in site.getsitepackages([sys.base_prefix]))
        return cls(base, system_site, dirs)


def link_running_dependencies(requirements: list[str], site_dir: Path, env: RunningEnvironment) -> list[str]:
    """Hard-link (copy across file systems) into ``site_dir`` every distribution the running controller
    imports for ``requirements``, their own requirements transitively, and pip; returns "name version" each.

    Markers and extras are not evaluated: a requirement counts when the running environment has it
    installed (so the pcsc/systemd extras come along where install.sh installed them, and nothing else).
    Distributions in the base interpreter's site-packages are left where they are when the new venv sees
    them by itself. pip unlinks a file before it writes one, so a link never lets one release's files
    change another's.
    """
    queue = [n for n in map(_requirement_name, [*requirements, "pip"]) if n]
    seen: set[str] = set()
    linked: list[str] = []
    while queue:
        name = queue.pop(0)
        if name in seen or name == PROJECT_NAME:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # the smoke test says so if the release needs it
        queue.extend(n for n in map(_requirement_name, dist.requires or []) if n)
        origin = Path(str(dist.locate_file(""))).resolve()
        if env.system_site and origin in env.base_site_dirs:
            continue
        files = dist.files
        if files is None:
            log.warning("%s %s has no RECORD: it cannot be given to the new release", name, dist.version)
            continue
        for rel in files:
            if rel.is_absolute() or ".." in rel.parts:
                continue  # console scripts in bin/: they name the running venv's interpreter
            src = Path(str(dist.locate_file(rel)))
            if not src.is_file():
                continue
            dst = site_dir / str(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except FileExistsError:
                continue
            except OSError:  # another file system, or fs.protected_hardlinks: copy instead
                shutil.copy2(src, dst)
        linked.append(f"{dist.metadata['Name']} {dist.version}")
    return linked


def pip_venv_installer(python: str | None = None, timeout_s: float = 900.0,
                       extra_site_packages: list[Path] | None = None,
                       inherit_dependencies: bool | None = None) -> VenvInstaller:
    """Production strategy: a venv like the running one + ``pip install --no-index --no-deps`` of the release.

    Default (``python`` None): the venv is made from the interpreter under the controller's own venv, with
    the same ``include-system-site-packages``, and gets the running venv's copies of the release's
    dependencies (:class:`RunningEnvironment`, :func:`link_running_dependencies`); no package index is
    needed. ``python`` given: a plain ``--system-site-packages`` venv of that interpreter, whose dependencies
    must be in its site-packages (``inherit_dependencies=True`` links them anyway: same Python version only).
    --ignore-installed because a visible environment may hold another version of this project, which must
    neither satisfy nor be touched by this install.
    ``extra_site_packages``: further dependency directories, appended to the venv's path by a .pth file.
    """
    inherit = python is None if inherit_dependencies is None else inherit_dependencies
    env = RunningEnvironment.current()
    base = python or env.base_python
    system_site = env.system_site if python is None else True

    def run(cmd: list[str]) -> None:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InstallFailed(f"{cmd[0]} could not run: {e}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise InstallFailed(f"{' '.join(cmd[1:4])} failed (exit {proc.returncode}): {tail}")

    def install(venv: Path, artifact: Path, version: str) -> None:
        venv, artifact = Path(venv).absolute(), Path(artifact).absolute()  # commands below run elsewhere
        run([base, "-m", "venv", *(["--system-site-packages"] if system_site else []), "--without-pip",
             str(venv)])
        py = str(venv / "bin" / "python")
        site_dir = _venv_site_packages(py)
        if inherit:
            try:
                linked = link_running_dependencies(artifact_requirements(artifact), site_dir, env)
            except OSError as e:
                raise InstallFailed(f"giving release {version} the controller's dependencies failed: {e}") from None
            log.info("release %s: dependencies from the running environment: %s", version,
                     ", ".join(linked) or "none needed")
        probe = subprocess.run([py, "-m", "pip", "--version"], capture_output=True, timeout=60, check=False)
        if probe.returncode != 0:  # no pip to see or to link: give the venv its own
            run([py, "-m", "ensurepip", "--default-pip"])
        cmd = [py, "-m", "pip", "install", "--no-index", "--no-deps", "--ignore-installed",
               "--disable-pip-version-check", "--no-warn-script-location"]
        if artifact.name.endswith(".tar.gz"):
            cmd.append("--no-build-isolation")
        run([*cmd, str(artifact)])
        if extra_site_packages:
            # Dependencies kept in a separate environment: a .pth file appends its site-packages after the
            # release's own, so the release's chargepoint wins.
            (site_dir / "_chargepoint_deps.pth").write_text("".join(f"{Path(d).resolve()}\n"
                                                                   for d in extra_site_packages))
        # Smoke test before anyone switches to it: the package imports, reports the expected version and
        # every dependency it declares is present in a matching version.
        proc = subprocess.run([py, "-c", _SMOKE_TEST], capture_output=True, text=True, timeout=120, check=False,
                              cwd=str(venv))
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or lines[0] != version:
            raise InstallFailed(
                f"the installed release does not import as version {version}: "
                f"{(proc.stderr.strip().splitlines() or lines or ['no output'])[-1]}"
            )
        if len(lines) > 1:
            raise InstallFailed(f"release {version} needs dependencies the controller's environment lacks: "
                                + "; ".join(lines[1:]))

    return install


# ---------------------------------------------------------------------------------------------------------
# Release manager


@dataclass(frozen=True)
class Pending:
    version: str
    deadline: datetime
    boots: int
    max_boots: int


@dataclass(frozen=True)
class RollbackReport:
    from_version: str
    to_version: str
    reason: str
    at: datetime


class ReleaseManager:
    """Releases on disk and the current/previous links.  Synchronous file-system code: call it from a
    worker thread in the service.  An flock on ``root/.lock`` serialises the service and the CLI."""

    STATE_FILE = "firmware-state.json"

    def __init__(self, root: Path, *, keep: int = 3, installer: VenvInstaller | None = None) -> None:
        if keep < 2:
            raise ValueError(f"keep={keep}: at least 2 releases (current and previous) must be kept")
        self.root = Path(root)
        self.keep = keep
        self.installer = installer or pip_venv_installer()
        self.releases_dir = self.root / "releases"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"
        self.state_path = self.root / self.STATE_FILE

    # -- helpers -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("firmware state %s unreadable (%s); starting from empty state", self.state_path, e)
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)
        self._fsync_dir(self.root)

    @staticmethod
    def _fsync_dir(d: Path) -> None:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _link_version(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if _VERSION_RE.match(name) else None

    def _atomic_link(self, link: Path, version: str) -> None:
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, link)
        self._fsync_dir(self.root)

    # -- queries -------------------------------------------------------------------------------------------

    def release_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise InstallFailed(f"{version!r} is not a valid release version")
        return self.releases_dir / version

    def is_complete(self, version: str) -> bool:
        return (self.release_dir(version) / ".complete").is_file()

    def current_version(self) -> str | None:
        return self._link_version(self.current_link)

    def previous_version(self) -> str | None:
        return self._link_version(self.previous_link)

    def installed_versions(self) -> list[str]:
        """Complete releases, oldest install first."""
        order = self._load().get("installed", [])
        found = [p.name for p in self.releases_dir.glob("*") if (p / ".complete").is_file()] \
            if self.releases_dir.is_dir() else []
        ranked = [v for v in order if v in found] + sorted(v for v in found if v not in order)
        return ranked

    def pending(self) -> Pending | None:
        p = self._load().get("pending")
        if not p:
            return None
        return Pending(p["version"], datetime.fromisoformat(p["deadline"]), int(p.get("boots", 0)),
                       int(p.get("max_boots", 3)))

    # -- install / switch / rollback -----------------------------------------------------------------------

    def install(self, artifact_path: Path, *, now: datetime | None = None) -> str:
        """Verify and install beside the running release; return its version.  Never touches ``current``."""
        artifact = verify_artifact(artifact_path)
        v = artifact.version
        with self._locked():
            if v == self.current_version():
                raise InstallFailed(f"version {v} is the running release; it is not installed over itself")
            dest = self.release_dir(v)
            self.releases_dir.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # an older copy of this version that is not running (e.g. previous): replace it
                shutil.rmtree(dest)
            try:
                (dest / "artifact").mkdir(parents=True)
                copy = dest / "artifact" / artifact.path.name
                shutil.copyfile(artifact.path, copy)
                # The venv must be created at its final path: scripts and pyvenv.cfg record absolute paths.
                self.installer(dest / "venv", copy, v)
                info = {
                    "version": v,
                    "artifact": copy.name,
                    "sha256": hashlib.sha256(copy.read_bytes()).hexdigest(),
                    "installed_at": (now or utc_now()).isoformat(),
                }
                (dest / "release.json").write_text(json.dumps(info, indent=2))
                with open(dest / ".complete", "w") as fh:
                    fh.write(v)
                    fh.flush()
                    os.fsync(fh.fileno())
            except BaseException as e:
                shutil.rmtree(dest, ignore_errors=True)
                if isinstance(e, InstallFailed):
                    raise
                if isinstance(e, Exception):
                    raise InstallFailed(f"installing {v} failed: {e}") from e
                raise
            state = self._load()
            order = [x for x in state.get("installed", []) if x != v] + [v]
            state["installed"] = order
            self._save(state)
            self._prune_locked(protect={v})
        log.info("installed release %s in %s", v, dest)
        return v

    def switch_to(self, version: str) -> None:
        """Make ``version`` current; the release that was current becomes ``previous``."""
        with self._locked():
            self._switch_locked(version)

    def _switch_locked(self, version: str) -> None:
        if not self.is_complete(version):
            raise InstallFailed(f"release {version} is not (completely) installed in {self.releases_dir}")
        cur = self.current_version()
        if cur == version:
            return
        if cur is not None:
            self._atomic_link(self.previous_link, cur)
        self._atomic_link(self.current_link, version)
        log.info("switched current release %s -> %s", cur, version)

    def rollback(self, reason: str = "manual rollback", *, report: bool = False,
                 now: datetime | None = None) -> str:
        """Switch back to ``previous``; return the version now current.  ``report`` records it so that the
        next boot sends FirmwareStatusNotification InstallationFailed (used for automatic rollbacks)."""
        with self._locked():
            return self._rollback_locked(reason, report, now or utc_now())

    def _rollback_locked(self, reason: str, report: bool, now: datetime) -> str:
        prev, cur = self.previous_version(), self.current_version()
        if prev is None or not self.is_complete(prev):
            raise RollbackFailed("there is no previous release to roll back to")
        self._atomic_link(self.current_link, prev)
        if cur is not None:
            self._atomic_link(self.previous_link, cur)
        state = self._load()
        if state.get("pending", {}).get("version") == cur:
            state.pop("pending", None)
        state["last_rollback"] = {"from": cur, "to": prev, "reason": reason, "at": now.isoformat(),
                                  "reported": not report}
        self._save(state)
        log.warning("rolled back %s -> %s: %s", cur, prev, reason)
        return prev

    def prune(self) -> list[str]:
        with self._locked():
            return self._prune_locked(set())

    def _prune_locked(self, protect: set[str]) -> list[str]:
        """Delete the oldest releases beyond ``keep``; never current, previous or pending."""
        keep_always = {self.current_version(), self.previous_version(), *protect}
        p = self._load().get("pending")
        if p:
            keep_always.add(p.get("version"))
        installed = self.installed_versions()
        removed: list[str] = []
        excess = len(installed) - self.keep
        for v in installed:
            if excess <= 0:
                break
            if v in keep_always:
                continue
            shutil.rmtree(self.releases_dir / v, ignore_errors=True)
            removed.append(v)
            excess -= 1
        # half-installed leftovers (power cut during install)
        if self.releases_dir.is_dir():
            for d in self.releases_dir.iterdir():
                if d.is_dir() and not (d / ".complete").exists() and d.name not in keep_always \
                        and d.name not in protect:
                    shutil.rmtree(d, ignore_errors=True)
        if removed:
            state = self._load()
            state["installed"] = [v for v in state.get("installed", []) if v not in removed]
            self._save(state)
            log.info("pruned old releases %s", removed)
        return removed

    # -- health confirmation -------------------------------------------------------------------------------

    def mark_pending_confirmation(self, version: str, deadline: datetime, *, max_boots: int = 3) -> None:
        """``version`` (now current) must call :meth:`confirm_healthy` before ``deadline`` and within
        ``max_boots`` starts, else it is rolled back."""
        if deadline.tzinfo is None:
            raise ValueError("deadline must be timezone-aware")
        with self._locked():
            if self.current_version() != version:
                raise InstallFailed(f"release {version} is not current; switch to it before marking it pending")
            if self.previous_version() is None:
                raise InstallFailed(f"release {version} has no previous release to fall back to")
            state = self._load()
            state["pending"] = {"version": version, "deadline": deadline.isoformat(), "boots": 0,
                                "max_boots": max_boots}
            self._save(state)

    def confirm_healthy(self) -> bool:
        """The running release proved itself (BootNotification accepted).  True if it was pending."""
        with self._locked():
            state = self._load()
            p = state.get("pending")
            if not p or p.get("version") != self.current_version():
                return False
            state.pop("pending")
            state["last_confirmed"] = p["version"]
            self._save(state)
        log.info("release %s confirmed healthy", p["version"])
        return True

    def check_boot(self, now: datetime, *, count_boot: bool = True) -> BootOutcome:
        """Call once per start.  'pending': current must still confirm; 'rolled_back': it missed its deadline
        or crashed ``max_boots`` times, previous is current again and the caller must restart;
        'confirmed': current is a confirmed release; 'none': no release is installed here (e.g. a dev run)."""
        with self._locked():
            state = self._load()
            cur = self.current_version()
            p = state.get("pending")
            if p and p.get("version") != cur:
                state.pop("pending")  # someone switched by hand
                self._save(state)
                p = None
            if not p:
                return "confirmed" if cur else "none"
            if count_boot:
                p["boots"] = int(p.get("boots", 0)) + 1
            deadline = datetime.fromisoformat(p["deadline"])
            if now >= deadline or p["boots"] > int(p.get("max_boots", 3)):
                why = (f"release {cur} did not confirm its health (BootNotification accepted) before "
                       f"{deadline.isoformat()}" if now >= deadline else
                       f"release {cur} started {p['boots'] - 1} times without confirming its health")
                self._save(state)
                try:
                    self._rollback_locked(why, True, now)
                except RollbackFailed as e:
                    log.error("cannot roll back unconfirmed release %s: %s", cur, e)
                    state.pop("pending")
                    self._save(state)
                    return "confirmed"
                return "rolled_back"
            self._save(state)
            return "pending"

    def expire_pending(self, now: datetime) -> bool:
        """Roll back if the pending release passed its deadline (in-process watchdog).  True if rolled back."""
        return self.check_boot(now, count_boot=False) == "rolled_back"

    def take_rollback_report(self) -> RollbackReport | None:
        """An automatic rollback not yet reported to the CSMS; marks it reported."""
        with self._locked():
            state = self._load()
            rb = state.get("last_rollback")
            if not rb or rb.get("reported", True):
                return None
            rb["reported"] = True
            self._save(state)
        return RollbackReport(rb.get("from") or "?", rb["to"], rb["reason"], datetime.fromisoformat(rb["at"]))

    def status(self) -> dict[str, Any]:
        p = self.pending()
        return {
            "root": str(self.root),
            "current": self.current_version(),
            "previous": self.previous_version(),
            "installed": self.installed_versions(),
            "pending": None if p is None else {"version": p.version, "deadline": p.deadline.isoformat(),
                                               "boots": p.boots, "max_boots": p.max_boots},
        }


# ---------------------------------------------------------------------------------------------------------
# FirmwareUpdater (UpdateFirmware.req, OCPP 1.6 §5.19 / §6.51; FirmwareStatusNotification §4.5)

Notify = Callable[[str], Awaitable[None]]
IdleCheck = Callable[[], bool | Awaitable[bool]]
Restart = Callable[[], Awaitable[None] | None]

BUSY_STATUSES = frozenset({"Downloading", "Downloaded", "Installing"})
#: Where an UpdateFirmware download lands before its content names it (stage_release).
DOWNLOAD_NAME = "firmware.download"


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def systemd_restart(unit: str = "chargepoint") -> None:
    """Production restart: ask systemd to restart the unit without waiting for it (it stops us)."""
    proc = await asyncio.create_subprocess_exec("systemctl", "--no-block", "restart", unit)
    await proc.wait()


class FirmwareUpdater:
    """Runs one UpdateFirmware at a time and reports FirmwareStatusNotification via ``notify``.

    Status sequence (OCPP 1.6 §7.25 FirmwareStatus): Downloading, then DownloadFailed (no complete,
    checksum-verified copy after ``retries`` attempts, §6.51 -- every failure counts, an HTTP 404 too: the
    file may not be published yet) or Downloaded.  A complete file that is not a valid release of this
    project is then InstallationFailed (it did download; DownloadFailed means "failed to download"), else,
    after waiting for idle connectors, Installing, then InstallationFailed or Installed followed by
    ``restart()``.  The release is recognised by its content, not by the URL (:func:`release_file_name`).
    The new release must call :meth:`confirm_healthy` once its BootNotification is accepted; otherwise it
    is rolled back and the next boot reports InstallationFailed.
    """

    def __init__(
        self,
        releases: ReleaseManager,
        *,
        notify: Notify,
        connectors_idle: IdleCheck,
        restart: Restart,
        download_dir: Path | None = None,
        confirm_timeout_s: float = 600.0,
        max_boots: int = 3,
        count_boots: bool = True,
        default_retries: int = 3,
        default_retry_interval_s: float = 60.0,
        idle_poll_s: float = 5.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], datetime] = utc_now,
        sleep: Sleep = asyncio.sleep,
        disk_usage: DiskUsage = shutil.disk_usage,
        can_judge_health: Callable[[], bool] = lambda: True,
    ) -> None:
        self.releases = releases
        self._can_judge = can_judge_health
        self._notify = notify
        self._idle = connectors_idle
        self._restart = restart
        self.download_dir = download_dir or releases.root / "downloads"
        self.confirm_timeout_s = confirm_timeout_s
        self.max_boots = max_boots
        self.count_boots = count_boots
        self.default_retries = default_retries
        self.default_retry_interval_s = default_retry_interval_s
        self.idle_poll_s = idle_poll_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._sleep = sleep
        self._disk_usage = disk_usage
        self._status = "Idle"
        self._installing = False
        self.task: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def last_status(self) -> str:
        """For TriggerMessage(FirmwareStatusNotification): the status while busy, else Idle (§4.5)."""
        return self._status if self._status in BUSY_STATUSES else "Idle"

    async def _report(self, status: str) -> None:
        self._status = status
        await self._notify(status)

    def schedule(self, location: str, retrieve_date: datetime, retries: int | None = None,
                 retry_interval: float | None = None) -> asyncio.Task[None]:
        """Start the update in the background (UpdateFirmware.conf has no payload; reply at once).
        A newer request replaces one still waiting or downloading; one already installing is kept."""
        if self.task is not None and not self.task.done():
            if self._installing:
                log.warning("UpdateFirmware for %s ignored: an installation is in progress", safe_url(location))
                return self.task
            self.task.cancel()
        if retrieve_date.tzinfo is None:
            retrieve_date = retrieve_date.replace(tzinfo=UTC)
        self.task = asyncio.create_task(
            self._run(location, retrieve_date,
                      self.default_retries if retries is None else retries,
                      self.default_retry_interval_s if retry_interval is None else retry_interval),
            name="firmware-update",
        )
        return self.task

    def _dest_for(self, location: str) -> Path:
        # Not the URL's file name: what the file is comes from its content (stage_release renames it).
        return self.download_dir / DOWNLOAD_NAME

    async def _wait_idle(self) -> None:
        # OCPP 1.6 §5.19: the Charge Point may wait for running transactions to end before installing.
        while not await _maybe_await(self._idle()):
            await self._sleep(self.idle_poll_s)

    async def _run(self, location: str, retrieve_date: datetime, retries: int, retry_interval: float) -> None:
        self.last_error = None
        self._status = "Idle"
        delay = (retrieve_date - self._clock()).total_seconds()
        if delay > 0:
            await self._sleep(delay)
        await self._report("Downloading")
        dest = self._dest_for(location)
        staged: Path | None = None
        try:
            result = await download(location, dest, retries=retries, retry_interval_s=retry_interval,
                                    max_bytes=self.max_bytes, disk_usage=self._disk_usage, sleep=self._sleep,
                                    retry_every_failure=True)
        except DownloadFailed as e:
            self.last_error = str(e)
            log.error("firmware download failed: %s", e)
            dest.unlink(missing_ok=True)
            await self._report("DownloadFailed")
            return
        await self._report("Downloaded")
        try:
            try:
                artifact = await asyncio.to_thread(stage_release, result.path)
                staged = artifact.path
            except InvalidRelease as e:
                self.last_error = f"{safe_url(location)} is not a release of {PROJECT_NAME}: {e}"
                log.error("firmware not installed: %s", self.last_error)
                await self._report("InstallationFailed")
                return
            await self._wait_idle()
            self._installing = True
            await self._report("Installing")
            current = await asyncio.to_thread(self.releases.current_version)
            if artifact.version == current:
                log.info("firmware %s is already running; nothing to install", current)
                await self._report("Installed")
                return
            try:
                version = await asyncio.to_thread(self.releases.install, artifact.path)
                await asyncio.to_thread(self._switch_and_mark, version, current)
            except (InstallFailed, InvalidRelease, OSError) as e:
                self.last_error = str(e)
                log.error("firmware installation failed: %s", e)
                await self._report("InstallationFailed")
                return
            await self._report("Installed")
            await self._wait_idle()  # a transaction may have started while installing: do not cut it
            log.info("restarting into firmware %s", version)
            await _maybe_await(self._restart())
        finally:
            self._installing = False
            dest.unlink(missing_ok=True)
            if staged is not None:
                staged.unlink(missing_ok=True)

    def _switch_and_mark(self, version: str, previous: str | None) -> None:
        self.releases.switch_to(version)
        if previous is None:
            return  # first install here: nothing to fall back to
        try:
            deadline = self._clock() + timedelta(seconds=self.confirm_timeout_s)
            self.releases.mark_pending_confirmation(version, deadline, max_boots=self.max_boots)
        except BaseException:
            self.releases.switch_to(previous)  # never leave an unguarded switch behind
            raise

    async def boot(self) -> BootOutcome:
        """Call once at start, before anything else is reported.  Rolls back an unconfirmed release that
        missed its deadline (then restarts), reports an earlier automatic rollback as InstallationFailed,
        and for a pending release starts a watchdog that rolls back at the deadline."""
        outcome = await asyncio.to_thread(self.releases.check_boot, self._clock(), count_boot=self.count_boots)
        if outcome == "rolled_back":
            # This process is the failed release: leave the report to the restored one.
            await _maybe_await(self._restart())
            return outcome
        report = await asyncio.to_thread(self.releases.take_rollback_report)
        if report is not None:
            self.last_error = f"rolled back {report.from_version} -> {report.to_version}: {report.reason}"
            await self._report("InstallationFailed")
        if outcome == "pending":
            self.watchdog = asyncio.create_task(self._watch(), name="firmware-confirm-watchdog")
        return outcome

    async def _watch(self) -> None:
        while True:
            p = await asyncio.to_thread(self.releases.pending)
            if p is None:
                return
            delay = (p.deadline - self._clock()).total_seconds()
            if delay > 0:
                await self._sleep(delay)
                continue
            if not self._can_judge():
                # The central system was never reached: that says nothing about the new release (the network
                # may be down). Keep waiting for the BootNotification instead of rolling back a good release.
                await self._sleep(max(self.idle_poll_s, 30.0))
                continue
            await self._wait_idle()  # a rollback restart must not cut a running transaction either
            if await asyncio.to_thread(self.releases.expire_pending, self._clock()):
                await _maybe_await(self._restart())
            return

    async def confirm_healthy(self) -> bool:
        """Call when BootNotification.conf is Accepted."""
        confirmed = await asyncio.to_thread(self.releases.confirm_healthy)
        if self.watchdog is not None and not self.watchdog.done():
            self.watchdog.cancel()
        return confirmed


# ---------------------------------------------------------------------------------------------------------
# CLI-facing functions (the lead wires them into chargepoint.cli)


def _looks_like_url(s: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s))


def cli_update(
    file_or_url: str,
    root: Path,
    *,
    confirm_timeout_s: float = 600.0,
    restart: Callable[[], None] | None = None,
    installer: VenvInstaller | None = None,
    retries: int = 3,
    out: Any = None,
    err: Any = None,
) -> int:
    """``chargepoint update FILE|URL``: install beside the running release and switch.  Exit 0 on success,
    1 when the download/install failed (nothing changed), 2 for a bad argument."""
    out = out or sys.stdout
    err = err or sys.stderr
    mgr = ReleaseManager(Path(root), installer=installer)
    path: Path
    if _looks_like_url(file_or_url):
        dest = mgr.root / "downloads" / DOWNLOAD_NAME
        print(f"downloading {safe_url(file_or_url)} ...", file=out)
        try:
            asyncio.run(download(file_or_url, dest, retries=retries, retry_interval_s=2.0))
        except DownloadFailed as e:
            print(f"error: download failed: {e}", file=err)
            return 1
        try:
            path = stage_release(dest).path  # named by its content: the URL may be …/download?id=42
        except InvalidRelease as e:
            dest.unlink(missing_ok=True)
            print(f"error: {safe_url(file_or_url)} is not a release of {PROJECT_NAME}: {e}", file=err)
            return 1
    else:
        path = Path(file_or_url)
        if not path.is_file():
            print(f"error: {path} does not exist (give a release file or an http(s)/ftp URL)", file=err)
            return 2
    try:
        previous = mgr.current_version()
        version = mgr.install(path)
        mgr.switch_to(version)
        if previous is not None:
            deadline = utc_now() + timedelta(seconds=confirm_timeout_s)
            mgr.mark_pending_confirmation(version, deadline)
    except (InvalidRelease, InstallFailed, OSError) as e:
        print(f"error: {e}", file=err)
        print(f"the running release ({mgr.current_version() or 'none'}) is unchanged", file=err)
        return 1
    finally:
        if _looks_like_url(file_or_url):
            path.unlink(missing_ok=True)
    print(f"installed {version} beside {previous or 'nothing'} and made it current", file=out)
    if previous is not None:
        print(f"it must connect and get BootNotification accepted within {confirm_timeout_s:.0f} s, "
              f"otherwise it rolls back to {previous} automatically", file=out)
    if restart is not None:
        restart()
    else:
        print("restart the service to run it: systemctl restart chargepoint", file=out)
    return 0


def cli_rollback(root: Path, *, out: Any = None, err: Any = None) -> int:
    """``chargepoint rollback``: switch back to the previous release.  Exit 0 on success, 1 otherwise."""
    out = out or sys.stdout
    err = err or sys.stderr
    mgr = ReleaseManager(Path(root))
    current = mgr.current_version()
    try:
        now_current = mgr.rollback("rollback requested on the command line")
    except (InstallFailed, OSError) as e:
        print(f"error: cannot roll back: {e} (current release: {current or 'none'})", file=err)
        return 1
    print(f"rolled back from {current} to {now_current}; restart the service: systemctl restart chargepoint",
          file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m chargepoint.firmware.update check-boot|status --root DIR``.

    check-boot is meant for systemd ``ExecStartPre=-<root>/previous/venv/bin/python -m
    chargepoint.firmware.update check-boot --root <root>``: the known-good release decides whether the
    new one gets another start, even if the new one crashes before its own check.
    """
    ap = argparse.ArgumentParser(prog="python -m chargepoint.firmware.update")
    ap.add_argument("command", choices=["check-boot", "status"])
    ap.add_argument("--root", type=Path, required=True)
    args = ap.parse_args(argv)
    mgr = ReleaseManager(args.root)
    if args.command == "status":
        print(json.dumps(mgr.status(), indent=2))
        return 0
    outcome = mgr.check_boot(utc_now())
    print(json.dumps({"outcome": outcome, "current": mgr.current_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
