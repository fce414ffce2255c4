"""The evaluation machinery: grids of attacks x defenses on a split, in shards, serial or on Ray; the
result files, their slices and the benchmark. Imports the method and the analyses, never figures or reports."""
