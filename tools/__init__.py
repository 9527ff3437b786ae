"""Build tooling: the generators of what the chart (cronjobs/) and docs/ carry, each run as
`python -m tools.<generator>` from the repository's root; a test fails when a committed output is stale."""
