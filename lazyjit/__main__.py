"""Command line: ``python -m lazyjit demo [--quick]``, ``python -m lazyjit bench`` and
``python -m lazyjit programs`` (the harness is :mod:`lazyjit.bench`)."""

import argparse


def main() -> None:
    """Parses the command line and runs the subcommand."""
    parser = argparse.ArgumentParser(prog="python -m lazyjit")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="eager Pyro, Pyro's jit and lazyjit's default side by side"
    )
    demo_parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    bench_parser = commands.add_parser(
        "bench",
        help="every contender side by side, one process each: tables, JSON and a chart",
        description="Benchmarks Pyro eager, Pyro's jit, every lazyjit backend and NumPyro "
        "(when installed) on SVI, the HMM, NUTS and a scaling sweep; see docs/benchmarks.md.",
    )
    bench_parser.add_argument(
        "--quick", action="store_true", help="a reduced run (a few minutes), for CI smoke use"
    )
    bench_parser.add_argument(
        "--out",
        help="directory for RESULTS.md, results.json and speedups.png (default: "
        "./lazyjit-bench for a full run, a new temporary directory with --quick or --only)",
    )
    bench_parser.add_argument(
        "--only",
        help="comma-separated workloads or groups (svi, hmm, nuts, scaling, sites-10, ...)",
    )
    bench_parser.add_argument(
        "--repeats", type=int, help="rounds per contender (default per workload)"
    )
    programs_parser = commands.add_parser(
        "programs",
        help="whole runs of real Pyro programs: eager, Pyro's jit, lazyjit, one process each",
        description="Times whole runs (compiles included) of a VAE, a deep Markov model, "
        "HMMs, LDA, an SIR model, eight schools and MuE, each contender in a fresh process; "
        "writes PROGRAMS.md (see docs/benchmarks.md).",
    )
    programs_parser.add_argument("--quick", action="store_true", help="a few seconds per run")
    programs_parser.add_argument("--only", help="comma-separated programs (vae, dmm, hmm, ...)")
    programs_parser.add_argument(
        "--out",
        help="directory for PROGRAMS.md and programs.json (default: ./lazyjit-programs for "
        "a full run, a new temporary directory with --quick or --only)",
    )
    args = parser.parse_args()
    if args.command == "programs":
        from .bench import programs

        try:
            programs.main(quick=args.quick, only=args.only, out=args.out)
        except ValueError as e:  # an unknown program in --only
            parser.error(str(e))
    elif args.command == "demo":
        from .bench import demo

        demo.main(quick=args.quick)
    else:
        from .bench import suite

        if args.repeats is not None and args.repeats < 1:
            parser.error("--repeats must be at least 1")
        try:
            suite.run(quick=args.quick, out=args.out, only=args.only, repeats=args.repeats)
        except ValueError as e:  # an unknown workload in --only
            parser.error(str(e))


if __name__ == "__main__":
    main()
