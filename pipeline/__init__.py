"""phicurate's pipeline: config, stages, their runner on Ray, CLI, I/O and reports."""
