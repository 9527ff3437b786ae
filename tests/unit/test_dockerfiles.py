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
