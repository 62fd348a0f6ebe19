"""One module per `sagetrain` subcommand: `add_arguments(parser)` and `run(args)`.
Heavy imports (torch, the API) happen inside `run`, never at module level."""
