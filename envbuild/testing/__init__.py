"""Real conda channels generated locally, for tests, the offline demo and benchmarks."""
