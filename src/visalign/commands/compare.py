"""``visalign compare``: the method grid (base → every method × data size → one table)."""

from __future__ import annotations

import argparse

from visalign.commands._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="run the method grid and write the table, figures and report",
        description="Base model, then every method at every alignment-data size, each "
                    "evaluated with the same settings (CHAIR, POPE x3, caption metrics, "
                    "held-out short answers). Resumable: finished cells are not recomputed. "
                    "Config keys: see CompareConfig in visalign.compare (--help-config).")
    p.add_argument("--out", default=None, help="output dir (overrides the config's out)")
    p.add_argument("--help-config", action="store_true", help="list config keys and exit")
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from visalign.compare import CompareConfig, run_compare
    from visalign.config import describe_config, load_config, parse_overrides

    if args.help_config:
        print(describe_config(CompareConfig))
        return 0
    over = parse_overrides(args.overrides)
    if args.out:
        over["out"] = args.out
    cfg = load_config(CompareConfig, args.config, over)
    res = run_compare(cfg)
    return _print_summary(res, cfg.out)


def _print_summary(res: dict, out: str) -> int:
    """Print the table and where the report is; exit status 1 when a cell failed."""
    import sys

    from visalign.report import results_markdown

    print(results_markdown(res["rows"], "visalign comparison"))
    for f in res.get("failures", []):
        print(f"FAILED {f['method']}-{f['data_size']}: {f['error']}", file=sys.stderr)
    print(f"report: {out}/report.md  results: {out}/results.json  figures: {out}/figures/")
    return 1 if res.get("failures") else 0
