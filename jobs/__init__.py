"""sdfleet jobs: YAML job specs, the `sdfleet` CLI, example jobs."""
