"""``streamad select``: label-free model selection over a grid of configurations."""


def add_parser(subparsers) -> None:
    """Register the ``select`` sub-command."""
    parser = subparsers.add_parser("select", help="train a grid of configurations and keep the best by validation log-likelihood")
    parser.set_defaults(handler=lambda args: 0)
