"""cellar's images as OCI archives a real container runtime imports, built on this machine.

The UBI Dockerfiles cannot be built here (their base images are not reachable, and there is no engine), so
this lays the same images out by hand: the settings that make the layout (venv path, its owner and mode,
USER, WORKDIR, ENV, ENTRYPOINT, CMD, labels) are read from `Dockerfile.backup` and `Dockerfile.archive`
themselves, so the two cannot drift apart, and the layers are

  1. a Debian root filesystem made with `debootstrap --variant=minbase` holding Python and the PostgreSQL
     client (cached outside the clone: it only changes with the package list),
  2. the project's wheel and its dependencies in a venv at the Dockerfiles' path, created by the image's own
     Python inside that root (`chroot`), pip removed, byte-compiled, owned by root and read-only for all.

It also builds the sandbox ("pause") image: one static Go program that sleeps until signalled.
Usage: python -m tests.harness.image [OUTPUT.tar]   (prints the archive's path and the image names)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.cluster import REPO

CACHE = Path(
    os.environ.get("CELLAR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cellar"
)
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("CELLAR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The runtime the Dockerfiles' images need, as Debian packages: Python with venv, and the PostgreSQL client
# of the test server's major (pg_dump, pg_restore, psql under /usr/lib/postgresql/<major>/bin, which
# cellar's pgtools searches as it searches /usr/pgsql-<major>/bin in the UBI images).
BASE_PACKAGES = ("python3", "python3-venv", "postgresql-client-15", "ca-certificates")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_REGISTRY = "localhost/cellar-e2e"
IMAGE_TAG = "test"
PAUSE_IMAGE = f"{IMAGE_REGISTRY}/pause:{IMAGE_TAG}"
DOCKERFILES = {"cellar-backup": REPO / "Dockerfile.backup", "cellar-archive": REPO / "Dockerfile.archive"}

PAUSE_SOURCE = """package main

// The pod sandbox's process: holds the pod's namespaces, sleeps until the runtime stops it.
import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsignals := make(chan os.Signal, 1)
\tsignal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
\t<-signals
}
"""


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


# ---- the layout, read from the Dockerfiles -------------------------------------------------------------
@dataclass(frozen=True)
class ImageLayout:
    """What an image of cellar looks like from inside, as its Dockerfile says."""

    venv: str
    venv_owner: tuple[int, int]
    venv_mode: int
    user: str
    workdir: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    labels: dict[str, str] = field(default_factory=dict)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    result = []
    for line in joined:
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def _pairs(arguments: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(arguments))


def layout_from_dockerfile(path: Path, base_path: str = DEBIAN_PATH) -> ImageLayout:
    """The final image's settings: its stage and the stages it is built FROM, in order (later wins)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    current = ""
    for index, (keyword, arguments) in enumerate(_instructions(path.read_text())):
        if keyword == "FROM":
            words = arguments.split()
            current = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#final{index}"
            parents[current] = words[0]
            stages[current] = []
        elif current:
            stages[current].append((keyword, arguments))
    chain = [list(stages)[-1]]
    while parents[chain[-1]] in stages:
        chain.append(parents[chain[-1]])
    settings: dict[str, Any] = {"env": {}, "labels": {}}
    for stage in reversed(chain):
        for keyword, arguments in stages[stage]:
            if keyword == "ENV":
                for name, value in _pairs(arguments).items():
                    settings["env"][name] = value.replace("$PATH", settings["env"].get("PATH", base_path))
            elif keyword == "LABEL":
                settings["labels"].update(_pairs(arguments))
            elif keyword in ("USER", "WORKDIR"):
                settings[keyword.lower()] = arguments
            elif keyword in ("ENTRYPOINT", "CMD"):
                settings[keyword.lower()] = json.loads(arguments)
            elif keyword == "COPY" and "--from=build" in arguments:
                words = arguments.split()
                options = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
                owner, group = options["chown"].split(":")
                settings["venv"] = words[-1]
                settings["venv_owner"] = (int(owner), int(group))
                settings["venv_mode"] = int(options["chmod"], 8)
    return ImageLayout(**settings)


# ---- layers --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    path: Path
    digest: str  # sha256 of the uncompressed tar: it is both the blob digest and the diff ID
    size: int


def _layer(path: Path) -> Layer:
    sidecar = path.with_suffix(".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        digest = sidecar.read_text().strip()
    else:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
        digest = f"sha256:{sha.hexdigest()}"
        sidecar.write_text(digest)
    return Layer(path, digest, path.stat().st_size)


def base_rootfs() -> tuple[Path, Layer]:
    """The Debian root filesystem (a directory, and the same as a layer), built once per package list."""
    key = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)} v1".encode()).hexdigest()[:12]
    directory = CACHE / "images" / f"debian-{DEBIAN_SUITE}-{key}"
    rootfs, layer = directory / "rootfs", directory / "base.tar"
    if layer.exists():
        return rootfs, _layer(layer)
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap (tests/harness/setup.sh does)")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    log(f"debootstrap {DEBIAN_SUITE} (minbase + {', '.join(BASE_PACKAGES)}) into {rootfs}: a few minutes, once")
    staging = directory / "rootfs.partial"
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            str(staging),
            DEBIAN_MIRROR,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (staging / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    # runc gives the emptyDir at /tmp the mode of the directory beneath it: world-writable and sticky.
    (staging / "tmp").chmod(0o1777)
    staging.rename(rootfs)
    partial = layer.with_suffix(".partial")
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "-C",
            str(rootfs),
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-cf",
            str(partial),
            ".",
        ],
        check=True,
    )
    partial.rename(layer)
    return rootfs, _layer(layer)


def _wheelhouse(directory: Path) -> None:
    """The project's wheel and every dependency's, for the image's Python (same minor as the tests')."""
    result = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "pip", "wheel", "-q", "--wheel-dir", str(directory), f"{REPO}[binary]"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip wheel failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def venv_layer(rootfs: Path, layout: ImageLayout, work: Path) -> Layer:
    """The venv of the Dockerfiles' build stage, made by the image's own Python inside a copy of its root."""
    root = work / "root"
    subprocess.run(["cp", "-a", str(rootfs), str(root)], check=True)
    _wheelhouse(root / "wheels")
    venv = layout.venv
    environment = ["/usr/bin/env", "-i", f"PATH={DEBIAN_PATH}", "HOME=/root", "PYTHONDONTWRITEBYTECODE=1"]
    install = [f"{venv}/bin/pip", "install", "-q", "--no-cache-dir", "--no-compile", "--no-index"]
    for step in (
        ["python3", "-m", "venv", venv],
        [*install, "--find-links", "/wheels", "cellar[binary]"],
        [f"{venv}/bin/pip", "uninstall", "-q", "-y", "pip"],
        [f"{venv}/bin/python", "-m", "compileall", "-q", venv],
    ):
        subprocess.run(["chroot", str(root), *environment, *step], check=True)
    owner, group = layout.venv_owner

    def as_copied(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # COPY --chown --chmod: every file and directory gets that owner and mode (symlinks keep theirs).
        info.uid, info.gid, info.uname, info.gname = owner, group, "", ""
        if not info.issym():
            info.mode = layout.venv_mode
        return info

    path = work / "venv.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(root / venv.lstrip("/"), arcname=venv.lstrip("/"), filter=as_copied)
    shutil.rmtree(root)
    return _layer(path)


def pause_layer(work: Path) -> Layer:
    binary = CACHE / "bin" / f"pause-{hashlib.sha256(PAUSE_SOURCE.encode()).hexdigest()[:12]}" / "pause"
    if not binary.exists():
        source = work / "pause-src"
        source.mkdir()
        (source / "go.mod").write_text("module cellar.dev/pause\n\ngo 1.21\n")
        (source / "main.go").write_text(PAUSE_SOURCE)
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
            cwd=source,
            env={**os.environ, "CGO_ENABLED": "0"},
            check=True,
        )
    path = work / "pause.tar"
    with tarfile.open(path, "w") as archive:
        info = archive.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.mode = 0o755
        with binary.open("rb") as handle:
            archive.addfile(info, handle)
    return _layer(path)


# ---- the OCI archive -----------------------------------------------------------------------------------
def _image_config(layout: ImageLayout | None, layers: list[Layer], **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if layout is not None:
        config = {
            "User": layout.user,
            "WorkingDir": layout.workdir,
            "Env": [f"{k}={v}" for k, v in {"PATH": DEBIAN_PATH, **layout.env}.items()],
            "Entrypoint": layout.entrypoint,
            "Cmd": layout.cmd,
            "Labels": layout.labels,
        }
    config.update(overrides)
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }


def write_oci_archive(path: Path, images: dict[str, tuple[dict[str, Any], list[Layer]]]) -> None:
    """An OCI image layout, as one tar (`ctr images import` reads it): name -> (config, layers)."""
    blobs: dict[str, Path | bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    manifests = []
    for name, (config, layers) in images.items():
        for layer in layers:
            blobs[layer.digest] = layer.path
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
        descriptor = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        descriptor["annotations"] = {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
        }
        descriptor["platform"] = {"architecture": "amd64", "os": "linux"}
        manifests.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}

    def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))

    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        add_bytes(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes(archive, "index.json", json.dumps(index).encode())
        for digest, content in blobs.items():
            name = f"blobs/sha256/{digest.split(':', 1)[1]}"
            if isinstance(content, bytes):
                add_bytes(archive, name, content)
            else:
                archive.add(str(content), arcname=name)
    partial.rename(path)


def image_name(title: str) -> str:
    return f"{IMAGE_REGISTRY}/{title}:{IMAGE_TAG}"


def build(output: Path) -> dict[str, str]:
    """Both images of cellar and the pause image into one OCI archive; returns title -> image name."""
    rootfs, base = base_rootfs()
    layouts = {title: layout_from_dockerfile(path) for title, path in DOCKERFILES.items()}
    first_layout = layouts["cellar-backup"]

    def runtime(layout: ImageLayout) -> tuple[Any, ...]:
        return (layout.venv, layout.venv_owner, layout.venv_mode, layout.env)

    if any(runtime(layout) != runtime(first_layout) for layout in layouts.values()):
        raise RuntimeError("Dockerfile.backup and Dockerfile.archive no longer share their runtime stage")
    with tempfile.TemporaryDirectory(prefix="cellar-image-", dir=output.parent) as scratch:
        work = Path(scratch)
        log("installing the wheel into the image's venv (chroot)")
        venv = venv_layer(rootfs, first_layout, work)
        pause = pause_layer(work)
        images: dict[str, tuple[dict[str, Any], list[Layer]]] = {
            image_name(title): (_image_config(layout, [base, venv]), [base, venv]) for title, layout in layouts.items()
        }
        images[PAUSE_IMAGE] = (_image_config(None, [pause], Entrypoint=["/pause"], User="65535:65535"), [pause])
        write_oci_archive(output, images)
    log(f"images in {output}: {', '.join(images)}")
    return {title: image_name(title) for title in layouts} | {"pause": PAUSE_IMAGE}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="cellar-images-")).resolve()
    if target.is_dir():
        target = target / "cellar-images.tar"
    for title, name in build(target).items():
        print(f"{title}={name}")
    print(f"archive={target}")
