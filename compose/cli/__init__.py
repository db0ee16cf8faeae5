"""The `recipe` command line: one module per subcommand."""
