"""The `interest-stream` commands, a module per group: each adds its subcommands to the parser
(``add_commands``), and each subcommand's ``run(args, settings)`` does its work."""
