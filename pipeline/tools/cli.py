"""The `phicurate` command (also `python -m pipeline`). User errors exit 2 with one paragraph, no
traceback."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.errors import UserError


def cmd_run(args) -> None:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.tools.status import print_status

    config = load_config(args.config, output=args.output)
    stages = args.stages.split(",") if args.stages else None
    run_pipeline(config, stages=stages, force=args.force)
    print()
    print_status(config.run.output)


def cmd_validate(args) -> None:
    from pipeline.config import load_config

    config = load_config(args.config, output=args.output)
    print(f"{args.config}: valid; stages: {', '.join(config.stages())}; output: {config.run.output}")
    for name in config.stages():  # sections that can explain their setting (e.g. dedup's detection curve)
        describe = getattr(getattr(config, name), "describe", None)
        if describe is not None:
            print(describe())


def cmd_report(args) -> None:
    from pipeline.tools.report import write_report

    print(f"report: {write_report(args.output)}")


def cmd_status(args) -> None:
    from pipeline.tools.status import print_status

    print_status(args.output)


def cmd_train(args) -> None:
    from pipeline.stages.train.stage import cli_train

    cli_train(args.config, output=args.output, resume=args.resume, stop_after=args.stop_after)


def cmd_tune(args) -> None:
    from pipeline.tools.tune import tune, write_select

    if args.serve:
        from pipeline.tools.tune_server import serve

        serve(args.output, args.config, port=args.port, host=args.host, write_path=args.write)
        return
    if not (args.signal or args.write):
        raise UserError("tune: give --signal NAME, --serve or --write CONFIG")
    if args.signal:
        tune(
            args.output,
            args.signal,
            config_path=args.config,
            at=args.at,
            n_samples=args.samples,
            plot_path=args.plot,
            keep=args.keep,
        )
    if args.write:
        print(write_select(args.output, args.write, args.config, args.signal, args.at))


def cmd_ablate(args) -> None:
    from pipeline.tools.ablate.run import cli_ablate

    arms = args.arms.split(",") if args.arms else None
    cli_ablate(args.config, arms=arms, seeds=args.seeds, tokens=args.tokens)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phicurate", description="Data-optimal pretraining data, Phi-3 style.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the pipeline's stages (skipping unchanged ones)")
    r.add_argument("config")
    r.add_argument("--output", help="output directory (overrides run.output)")
    r.add_argument("--stages", help="comma-separated stages to run, e.g. ingest,annotate")
    r.add_argument("--force", action="store_true", help="rerun the selected stages even if unchanged")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a config and explain what it will do")
    v.add_argument("config")
    v.add_argument("--output")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("status", help="a table of stages and their counts in an output directory")
    s.add_argument("output")
    s.set_defaults(func=cmd_status)

    rp = sub.add_parser(
        "report", help="write OUTPUT/report.html: funnel, signals, languages, dedup, synth, mixes, loss"
    )
    rp.add_argument("output")
    rp.set_defaults(func=cmd_report)

    t = sub.add_parser(
        "train", help="train Phi-3 on the phase mixes (phase 1, then phase 2); also under torchrun"
    )
    t.add_argument("config")
    t.add_argument("--output", help="output directory (overrides run.output)")
    t.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint of an unfinished run"
    )
    t.add_argument(
        "--stop-after", type=int, metavar="STEPS", help="stop with a checkpoint after this many steps"
    )
    t.set_defaults(func=cmd_train)

    tu = sub.add_parser(
        "tune", help="what select's thresholds keep, from annotate's columns: one signal, or a page (--serve)"
    )
    tu.add_argument("output")
    tu.add_argument("--signal", help="a signal column (e.g. edu_score, gopher_words) or a rule name")
    tu.add_argument(
        "--config",
        help="take the other select rules from this config (default: those of the last select run)",
    )
    tu.add_argument(
        "--at", type=float, nargs="+", metavar="T", help="thresholds to evaluate (default: a quantile grid)"
    )
    tu.add_argument(
        "--samples", type=int, default=0, metavar="N", help="print N documents on each side of the threshold"
    )
    tu.add_argument("--plot", help="histogram PNG path (default: OUTPUT/tune/SIGNAL.png)")
    tu.add_argument(
        "--keep",
        choices=["above", "below"],
        help="for a signal without a rule in the config: which side passes",
    )
    tu.add_argument(
        "--serve", action="store_true", help="serve a page to move every select threshold at once"
    )
    tu.add_argument("--port", type=int, default=8765, help="--serve: port (0: any free one; default 8765)")
    tu.add_argument("--host", default="127.0.0.1", help="--serve: address to bind (default 127.0.0.1: local)")
    tu.add_argument(
        "--write",
        metavar="CONFIG",
        help="write the select section (with --signal: at the --at threshold) into this recipe; "
        "a new file copies --config's",
    )
    tu.set_defaults(func=cmd_tune)

    ab = sub.add_parser(
        "ablate", help="train the same small model on each data arm (raw, filtered, curated, ...) and compare"
    )
    ab.add_argument("config", help="an ablation YAML (with `base:`) or a pipeline config (default settings)")
    ab.add_argument("--arms", help="comma-separated arms, e.g. raw,filtered,curated or a recipe name")
    ab.add_argument("--seeds", type=int, help="training seeds per arm (default 3)")
    ab.add_argument(
        "--tokens", type=int, help="training tokens per arm (default: train.max_phase_tokens x phases)"
    )
    ab.set_defaults(func=cmd_ablate)

    from classifiers.cli import add_parser as add_classifier_parser

    add_classifier_parser(sub)
    return p


_OURS = ("pipeline", "synth", "classifiers", "train_handoff")


def _show_progress() -> None:
    """phicurate's progress lines ("[ingest] running ...") as plain lines on stdout; other libraries' records
    (Ray Data logs each operator's progress at INFO) only from WARNING up, as without this handler."""
    if any(getattr(h, "_phicurate", False) for h in logging.getLogger().handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda r: r.name.split(".")[0] in _OURS or r.levelno >= logging.WARNING)
    handler._phicurate = True
    root = logging.getLogger()
    root.addHandler(handler)
    for name in _OURS:
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_progress()
    try:
        args.func(args)
    except UserError as e:
        print(f"phicurate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
