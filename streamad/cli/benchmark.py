"""``streamad benchmark``: run the detector over the NAB and SMAP/MSL benchmarks."""


def add_parser(subparsers) -> None:
    """Register the ``benchmark`` sub-command."""
    parser = subparsers.add_parser("benchmark", help="run the NAB or SMAP/MSL benchmark")
    parser.set_defaults(handler=lambda args: 0)
