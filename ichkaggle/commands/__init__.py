"""Subcommands of the ichkaggle CLI: each module has add_arguments(parser) and run(args) -> exit code."""
