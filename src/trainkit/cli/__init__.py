"""The `trainkit` command: subcommands, the check of a config before a run, one-line errors. The top layer."""
