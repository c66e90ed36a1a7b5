"""One module per `facefab` subcommand: add_parser(subparsers) and the function it runs."""
