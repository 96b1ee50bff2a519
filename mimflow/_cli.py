"""The `mimflow` command."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mimflow` command; returns the exit code (2 for user errors)."""
    parser = argparse.ArgumentParser(prog="mimflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="escape times of two two-direction links against their laws")
    quick.add_argument("--seeds", type=int, default=8, help="seeds per dimension (default 8)")
    quick.add_argument("--dims", type=float, nargs="+", default=[1e2, 1e3, 1e4], help="dimensions d")
    quick.add_argument("--seed", type=int, default=0, help="PRNG seed")
    args = parser.parse_args(argv)
    import jax

    # float32 cannot resolve the late, slow saddles over t ~ 10⁸ (see README, Precision).
    jax.config.update("jax_enable_x64", True)
    from ._quickstart import quickstart

    try:
        print(quickstart(seeds=args.seeds, dims=tuple(args.dims), seed=args.seed))
    except ValueError as error:
        print(f"mimflow: error: {error}", file=sys.stderr)
        return 2
    return 0
