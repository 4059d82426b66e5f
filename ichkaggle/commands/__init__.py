"""Subcommands of the ichkaggle CLI: each module has add_arguments(parser) and main(args) -> exit code."""
