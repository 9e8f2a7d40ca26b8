"""The `distlearn` command: argument parsing, the train command, the run folder's outputs and tracking."""
