"""Command line: ``python -m lazyjit demo [--quick]``."""

import argparse

from . import demo


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lazyjit")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="eager Pyro, Pyro's jit and lazyjit side by side"
    )
    demo_parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    args = parser.parse_args()
    if args.command == "demo":
        demo.main(quick=args.quick)


if __name__ == "__main__":
    main()
