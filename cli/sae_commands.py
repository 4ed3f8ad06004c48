"""The labeling subcommands of `mgsteer`: label, browse, eval-steer (heavy imports stay inside)."""

from __future__ import annotations

import argparse
import sys

from cli import argtypes as types
from cli.common import feature_list, model_args, progress_bars, sampling_args, sampling_config, steer_mode_args
from engine import limits
from engine.errors import MgsteerError
from engine.outputs import output_dir, output_file


def add_commands(sub) -> None:
    lab = sub.add_parser("label", help="label SAE features from their top windows; writes SAE/features.json")
    lab.add_argument("--sae", required=True, help="SAE folder from mgsteer train")
    lab.add_argument("--acts", required=True, help="the activation store the SAE was trained on (or another)")
    model_args(lab, default=None, default_text="the store's model")
    lab.add_argument(
        "--labelers", default="descriptors", help="comma-separated: descriptors,notes,world,clap,classifier,llm"
    )
    lab.add_argument(
        "--features",
        help="comma-separated ids, or 'all': every feature that fired (not given: those filter.json kept, "
        "or every feature that fired when it kept none)",
    )
    lab.add_argument("--limit", type=types.COUNT, help="label at most this many features (most frequent first)")
    lab.add_argument("--top-n", type=types.whole(1, 1000), default=10, help="top windows per feature")
    lab.add_argument("--window-s", type=types.number(0.0, 30.0, above=True), default=3.0, help="seconds around a peak")
    lab.add_argument("--negatives", type=types.whole(0, 10_000), default=20, help="random windows to contrast with")
    lab.add_argument("--shard", help="i/n: this worker labels every n-th feature from the i-th")
    _labeler_args(lab)
    lab.set_defaults(func=cmd_label)

    br = sub.add_parser("browse", help="write a static HTML page to search and listen to the labeled features")
    br.add_argument("--sae", required=True, help="SAE folder with features.json")
    br.add_argument("--out", default="features.html", help="the page to write (.html)")
    br.set_defaults(func=cmd_browse)

    ev = sub.add_parser("eval-steer", help="measure whether steering a feature raises its concept, vs baselines")
    model_args(ev)
    ev.add_argument("--sae", required=True, help="SAE folder")
    ev.add_argument("--features", required=True, help="comma-separated feature ids")
    ev.add_argument("--concept", action="append", default=[], metavar="FEATURE=TEXT", help="override a label")
    ev.add_argument(
        "--prompts", help="text file, one prompt per line (not given: 4 neutral prompts; a world model: 4 keys)"
    )
    ev.add_argument("--seeds", type=types.whole(1, 1000), default=2, help="seeds per prompt")
    ev.add_argument("--seconds", type=types.SECONDS, default=5.0, help="seconds per clip")
    ev.add_argument("--alpha", type=types.ALPHA, default=1.0, help="steering strength, in units of β")
    steer_mode_args(ev)
    ev.add_argument("--no-prompt-baseline", action="store_true", help="skip the label-in-the-prompt baseline")
    ev.add_argument(
        "--scorer",
        default="clap",
        choices=("clap", "classifier", "descriptors", "notes", "world"),
        help="what judges the clips (world: the planted grammar's exact posterior, for world models)",
    )
    ev.add_argument("--out", default="eval_steer", help="folder for eval_steer.json and eval_steer.html")
    _labeler_args(ev)
    sampling_args(ev)
    ev.set_defaults(func=cmd_eval_steer)


MIN_PAIRS = 5  # the one-sided Wilcoxon signed-rank test cannot reach p < 0.05 on fewer pairs


def _labeler_args(p: argparse.ArgumentParser) -> None:
    from sae.labelers import LabelerSettings

    d = LabelerSettings()
    p.add_argument("--clap-model", default=d.clap_model, help=f"tiny, a hub id or a folder (default {d.clap_model})")
    p.add_argument("--classifier-model", default=d.classifier_model, help="tiny, a hub id or a folder")
    p.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (or MGSTEER_LLM_URL)")
    p.add_argument("--llm-model", help="model name at that endpoint (or MGSTEER_LLM_MODEL)")
    p.add_argument("--llm-timeout", type=types.number(0.0, 3600.0, above=True), default=60.0, help="seconds a request")


def _settings(args: argparse.Namespace):
    from sae.labelers import LabelerSettings
    from sae.labelers.llm import LLMConfig

    llm = LLMConfig(url=args.llm_url, model=args.llm_model, timeout_s=args.llm_timeout)
    return LabelerSettings(args.clap_model, args.classifier_model, llm, args.device)


def _ids(text: str) -> tuple[int, ...]:

    return tuple(feature_list(text))


def cmd_label(args: argparse.Namespace) -> None:
    from engine.model import load_musicgen
    from sae.examples import ExampleConfig
    from sae.harvest import parse_shard
    from sae.label import LabelConfig, label_features
    from sae.labelers import parse_names
    from sae.store import ActivationStore

    names = parse_names(args.labelers)
    output_dir(args.sae, "--sae")
    cfg = LabelConfig(
        labelers=names,
        features=_ids(args.features) if args.features and args.features != "all" else None,
        every_live=args.features == "all",
        limit=args.limit,
        examples=ExampleConfig(top_n=args.top_n, window_s=args.window_s, negatives=args.negatives),
        shard=parse_shard(args.shard) if args.shard else (0, 1),
        settings=_settings(args),
    )
    model = args.model or ActivationStore(args.acts).meta.model
    lm = load_musicgen(model, args.device, args.dtype)
    summary = label_features(args.sae, args.acts, lm, cfg, progress=progress_bars())
    print(
        f"labeled {summary['labeled']} features with {', '.join(names)} "
        f"({summary['skipped']} already done, {summary['errors']} labeler errors); wrote {args.sae}/features.json"
    )


def cmd_browse(args: argparse.Namespace) -> None:
    from sae.browse import write_browser

    page = write_browser(args.sae, output_file(args.out, (".html", ".htm")))
    print(f"wrote {page} (open it in a browser; audio in {page.stem}_files/)")


def cmd_eval_steer(args: argparse.Namespace) -> None:
    from dataclasses import replace
    from pathlib import Path

    from engine.model import load_musicgen
    from sae.catalog import CATALOG_FILE, load_catalog
    from sae.eval_steer import (
        DEFAULT_PROMPTS,
        EvalConfig,
        concept_for,
        default_prompts,
        evaluate_steering,
        write_report,
    )
    from sae.files import load_sae
    from sae.harvest import prompt_clips
    from sae.labelers import build_labelers

    concepts = {}
    for item in args.concept:
        feature, sep, text = item.partition("=")
        if not sep or not text.strip():
            raise MgsteerError(f"bad --concept '{item}': use FEATURE=TEXT, e.g. 12=piano")
        concepts[_ids(feature)[0]] = text.strip()
    prompts = tuple(c.text for c in prompt_clips(args.prompts, 1.0)) if args.prompts else DEFAULT_PROMPTS
    output_dir(args.out)  # checked now: the clips take long to render and score
    pairs = len(prompts) * args.seeds
    if pairs < MIN_PAIRS:
        print(
            f"note: {len(prompts)} prompts × {args.seeds} seeds give {pairs} pairs; the Wilcoxon test needs "
            f"≥ {MIN_PAIRS} to reach p < 0.05, so no feature can count as steerable (raise --seeds)",
            file=sys.stderr,
        )
    cfg = EvalConfig(
        features=_ids(args.features),
        concepts=concepts,
        prompts=prompts,
        seeds=tuple(range(args.seed, args.seed + args.seeds)),
        seconds=args.seconds,
        alpha=args.alpha,
        mode=args.mode,
        halves=args.halves,
        prompt_baseline=not args.no_prompt_baseline,
        sampling=sampling_config(args),
    )
    catalog = load_catalog(args.sae) if (Path(args.sae) / CATALOG_FILE).is_file() else None
    for feature in cfg.features:  # every feature needs a concept: say so before loading models
        concept_for(feature, catalog, cfg)
    lm = load_musicgen(args.model, args.device, args.dtype)
    if not args.prompts:
        cfg = replace(cfg, prompts=default_prompts(lm))
    for prompt in cfg.prompts:
        limits.prompt_tokens(lm.tokenizer, prompt)
    loaded = load_sae(args.sae, device=lm.device)
    scorer = build_labelers((args.scorer,), _settings(args))[0]
    report = evaluate_steering(lm, loaded, scorer, cfg, catalog, progress=progress_bars())
    json_path, html_path = write_report(report, args.out)
    share, formed = report["steerable_share"], report["steerable_well_formed_share"]
    print(
        f"{report['evaluated']} features evaluated; steerable: "
        + (f"{100 * share:.0f} %" if share is not None else "n/a")
        + (f" ({100 * formed:.0f} % while the music stays music)" if formed is not None else "")
        + f"; wrote {json_path} and {html_path}"
    )
