"""The README's install example is the chart's example values file, as it is (its comment lines aside)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_install_example_is_the_fleet_values_file() -> None:
    readme = (REPO / "README.md").read_text()
    install = readme[readme.index("## Install\n") :]
    shown = install[install.index("```yaml\n") + len("```yaml\n") : install.index("\n```", install.index("```yaml"))]
    example = (REPO / "cronjobs" / "examples" / "fleet-values.yaml").read_text()
    kept = "\n".join(line for line in example.splitlines() if not line.startswith("# ")).strip()
    assert shown.strip() == kept, "copy cronjobs/examples/fleet-values.yaml into the README's Install"
