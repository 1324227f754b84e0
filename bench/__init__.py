"""exnet's benchmarks: each prints measured figures next to a baseline measured in the same run."""
