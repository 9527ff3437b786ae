"""Both images are built on the same stages, so a registry stores their runtime layers once."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _shared_part(job: str) -> list[str]:
    lines = (REPO / f"Dockerfile.{job}").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ARG BUILD_IMAGE="))
    end = next(i for i, line in enumerate(lines) if line.startswith(f"# ---- the {job} image"))
    return lines[start:end]


def test_build_and_runtime_stages_are_identical() -> None:
    assert _shared_part("backup") == _shared_part("archive")


def test_base_images_are_pinned_by_digest_and_entrypoints_match_the_scripts() -> None:
    for job in ("backup", "archive"):
        text = (REPO / f"Dockerfile.{job}").read_text()
        assert text.count("@sha256:") == 2
        assert f'ENTRYPOINT ["cellar-{job}"]' in text
        assert f'cellar-{job} = "jobs.{job}.__main__:entrypoint"' in (REPO / "pyproject.toml").read_text()
        assert "USER 1001" in text.rsplit("FROM ", 1)[1]  # the final stage runs as non-root


def test_the_test_image_takes_its_layout_from_each_dockerfile() -> None:
    """tests/harness/image.py lays the end-to-end tests' image out from the Dockerfile itself; this pins what it
    reads, so a change to either side that breaks the manifests' assumptions fails here."""
    from tests.harness.image import DEBIAN_PATH, Layer, _image_config, layout_from_dockerfile

    for job in ("backup", "archive"):
        layout = layout_from_dockerfile(REPO / f"Dockerfile.{job}")
        assert layout.venv == "/opt/cellar"
        assert layout.venv_owner == (0, 0)
        assert layout.venv_mode == 0o755  # read-only for every user but root
        assert layout.user == "1001"
        assert layout.workdir == "/tmp"
        assert layout.env == {
            "PATH": f"/opt/cellar/bin:{DEBIAN_PATH}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
        }
        assert layout.entrypoint == [f"cellar-{job}"]
        assert layout.cmd == [job]
        assert layout.labels["org.opencontainers.image.title"] == f"cellar-{job}"
        config = _image_config(layout, [Layer(Path("base.tar"), "sha256:" + "0" * 64, 1)])["config"]
        assert config["User"] == "1001"
        assert config["Entrypoint"] == [f"cellar-{job}"]
        assert f"PATH=/opt/cellar/bin:{DEBIAN_PATH}" in config["Env"]
        assert "HOME=/tmp" in config["Env"]


def test_the_layout_parser_follows_the_stage_chain(tmp_path: Path) -> None:
    from tests.harness.image import layout_from_dockerfile

    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM base AS build\nUSER 0\nENV IGNORED=1\n"
        "FROM runtime-base AS runtime\nCOPY --from=build --chown=0:0 --chmod=0555 /venv /app\n"
        "ENV PATH=/app/bin:$PATH \\\n    HOME=/home\n"
        '# a comment\nFROM runtime\nLABEL a="b c"\nUSER 4242\nWORKDIR /home\n'
        'ENTRYPOINT ["run"]\nCMD ["now"]\n'
    )
    layout = layout_from_dockerfile(dockerfile, base_path="/bin")
    assert layout.venv == "/app"
    assert layout.venv_mode == 0o555
    assert layout.env == {"PATH": "/app/bin:/bin", "HOME": "/home"}  # not the build stage's
    assert (layout.user, layout.workdir, layout.entrypoint, layout.cmd) == ("4242", "/home", ["run"], ["now"])
    assert layout.labels == {"a": "b c"}
