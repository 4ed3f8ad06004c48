"""`mgsteer eval-steer`: does turning a feature's knob do what its label says?

The paper's Table 2 protocol with the baselines its reviewers asked for. For each chosen
feature × prompt × seed, four clips: no steering; α·β·W_dec[j]; a random direction of the
same norm at the same layer; and (optionally) no steering with the label written into the
prompt. Each clip is scored for the concept (CLAP cosine to the label, the classifier's
probability of it, a descriptor or transcribed-note measure, or, for a world model, the exact
posterior of the planted attribute value the label names, read from the clip's tokens). Per
feature: the mean gain of steering over each baseline and a one-sided
Wilcoxon signed-rank test over the (prompt, seed) pairs; a feature is *steerable* when it
beats both the unsteered and the random-direction clip at p < 0.05. Where the scorer knows
when music stops being music (the world's grammar), the same tests are run again with every
clip that is no longer music scored 0 (`well_formed`): a push that breaks the music can raise
a score by itself, and a random push of the same norm can too.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.errors import MgsteerError
from engine.model import LoadedModel
from engine.render import render
from engine.steering import FeatureSteer, Halves, Mode, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.files import LoadedSAE
from sae.labelers import Labeler
from sae.labelers.base import WindowCodes, window_scores

DEFAULT_PROMPTS = ("simple melody", "a calm piano piece", "an upbeat pop song", "ambient pads")
# A planted world's model knows only its grammar's words: its neutral prompts name a key alone
# (which no other attribute depends on); for a key concept, give --prompts of your own.
WORLD_PROMPTS = ("C major melody", "D minor melody", "F major melody", "A minor melody")


def steer_spec(feature: int, alpha: float, cfg: EvalConfig) -> SteeringSpec:
    """Feature `feature` at `alpha`, in the config's mode and CFG halves."""
    return SteeringSpec((FeatureSteer(feature, alpha),), cfg.mode, cfg.halves)


def default_prompts(lm) -> tuple[str, ...]:
    """The neutral prompts steering is measured under when none are given, in `lm`'s words."""
    return WORLD_PROMPTS if lm.own_codec is not None else DEFAULT_PROMPTS


LABEL_PREFERENCE = ("world", "llm", "classifier", "clap", "notes", "descriptors")
BASELINES = ("none", "random", "prompt")
TIE_RTOL = 1e-9  # scores closer than this, relatively, differ by rounding alone


@dataclass(frozen=True)
class EvalConfig:
    features: tuple[int, ...]
    concepts: dict[int, str] = field(default_factory=dict)  # override the catalog's labels
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    seconds: float = 5.0
    alpha: float = 1.0
    mode: Mode = "add"  # as render's --mode: add α·β·W_dec, or clamp the activation at α·β
    halves: Halves = "both"  # as render's --halves: steer both CFG halves or the conditional one
    prompt_baseline: bool = True
    significance: float = 0.05
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if not self.features:
            raise MgsteerError("eval-steer needs at least one feature (--features)")
        if not self.prompts or not self.seeds:
            raise MgsteerError("eval-steer needs at least one prompt and one seed")
        if not math.isfinite(self.alpha):
            raise MgsteerError(f"--alpha must be a finite number, got {self.alpha}")


def concept_for(feature: int, catalog: dict | None, cfg: EvalConfig) -> str:
    """The label to score: an explicit one, else the catalog's best by labeler preference (the
    world's exact labels first: where they exist, they are the truth)."""
    if feature in cfg.concepts:
        return cfg.concepts[feature]
    record = next((r for r in (catalog or {}).get("features", []) if r["id"] == feature), None)
    if record is not None:
        for name in LABEL_PREFERENCE:
            labels = record.get("labels", {}).get(name)
            if labels:
                return labels[0]["label"]
    raise MgsteerError(
        f"feature {feature} has no label: label it (mgsteer label) or name it with --concept {feature}=TEXT"
    )


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    codes: WindowCodes


def random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction with the norm of `like` (the matched-norm baseline)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(like.shape, generator=gen)
    return v / v.norm() * like.float().norm().cpu()


def paired_test(steered: np.ndarray, baseline: np.ndarray) -> dict:
    """Mean gain and one-sided Wilcoxon signed-rank p (steered > baseline) over pairs.

    Scores equal to float rounding are ties: a posterior of 1 summed in another order reads
    1 − 2e-16, and the signed-rank test would count each such pair as the baseline winning
    (on the world's tempo that turned 12 wins and 1 loss in 32 pairs into p 0.035)."""
    from scipy.stats import wilcoxon

    steered, baseline = np.asarray(steered, float), np.asarray(baseline, float)
    diff = np.where(np.isclose(steered, baseline, rtol=TIE_RTOL, atol=0.0), 0.0, steered - baseline)
    p = float(wilcoxon(diff, alternative="greater").pvalue) if np.any(diff) else 1.0
    return {"gain": round(float(diff.mean()), 5), "p": round(p, 5), "wins": int((diff > 0).sum()), "pairs": len(diff)}


def beats(tests: dict, significance: float) -> bool:
    """Steerable: a positive gain at p < `significance` over both the unsteered and the random clip."""
    return all(tests[b]["gain"] > 0 and tests[b]["p"] < significance for b in ("none", "random"))


def well_formed_tests(scores: dict[str, np.ndarray], formed: dict[str, np.ndarray], significance: float) -> dict:
    """The same tests with a clip that is no longer music scored 0: steering must reach the
    concept and keep the music, so a push that only breaks it (which a scorer may hear as
    "fast") does not count for it, and a random push that does so does not count against it."""
    kept = {name: np.where(formed[name], v, 0.0) for name, v in scores.items()}
    tests = {b: paired_test(kept["steered"], kept[b]) for b in ("none", "random")}
    return {
        "share": {name: round(float(np.mean(formed[name])), 4) for name in scores},
        "vs": tests,
        "steerable": beats(tests, significance),
        "scores": {name: [round(float(x), 5) for x in v] for name, v in kept.items()},
    }


def evaluate_steering(
    lm: LoadedModel,
    loaded: LoadedSAE,
    scorer: Labeler,
    cfg: EvalConfig,
    catalog: dict | None = None,
    progress: bool = False,
) -> dict:
    """Render every condition, score it, test it; returns the report (JSON-ready)."""
    from tqdm import tqdm

    stats = loaded.require_stats()
    concepts = {loaded.check_feature(f): concept_for(f, catalog, cfg) for f in cfg.features}
    pairs = [(p, s) for p in cfg.prompts for s in cfg.seeds]
    per_feature = 2 + int(cfg.prompt_baseline)
    bar = tqdm(total=len(pairs) * (1 + per_feature * len(concepts)), unit="clip", disable=not progress)

    def clip(prompt: str, seed: int, **steer) -> Clip:
        sampling = replace(cfg.sampling, seed=seed)
        out = render(lm, prompt, cfg.seconds, sampling, sae=loaded if steer else None, **steer)
        bar.update(1)
        audio = out.audio.mean(axis=1) if out.audio.ndim == 2 else out.audio  # stereo: the scorers hear the mix
        return Clip(audio, WindowCodes(out.codes.cpu().numpy()))

    def score(concept: str, clips: list[Clip]) -> np.ndarray | None:
        return window_scores(scorer, concept, [c.audio for c in clips], lm.sample_rate, [c.codes for c in clips])

    plain = [clip(p, s) for p, s in pairs]
    features = []
    for f, concept in concepts.items():
        direction = float(cfg.alpha) * stats.max_activation[f].cpu() * loaded.sae.W_dec[f].detach().cpu()
        clips = {
            "steered": [clip(p, s, spec=steer_spec(f, cfg.alpha, cfg)) for p, s in pairs],
            "random": [clip(p, s, vector=random_direction(direction, 7919 * f + s)) for p, s in pairs],
        }
        if cfg.prompt_baseline:
            clips["prompt"] = [clip(f"{p}, {concept}", s) for p, s in pairs]
        scores = {"none": score(concept, plain)}
        if scores["none"] is None:
            features.append({"id": f, "concept": concept, "skipped": f"the {scorer.name} scorer cannot judge it"})
            continue
        scores |= {name: score(concept, c) for name, c in clips.items()}
        tests = {b: paired_test(scores["steered"], scores[b]) for b in BASELINES if b in scores}
        steerable = beats(tests, cfg.significance)
        record = {
            "id": f,
            "concept": concept,
            "mean_score": {name: round(float(np.mean(v)), 5) for name, v in scores.items()},
            "vs": tests,
            "steerable": steerable,
            "scores": {name: [round(float(x), 5) for x in v] for name, v in scores.items()},
        }
        quality = {name: scorer.code_quality([c.codes for c in v]) for name, v in (clips | {"none": plain}).items()}
        if all(q is not None for q in quality.values()):
            record["quality"] = {
                name: {k: round(float(np.mean(x)), 4) for k, x in q.items()} for name, q in quality.items()
            }
            formed = {name: scorer.well_formed(q) for name, q in quality.items()}
            if all(f is not None for f in formed.values()):
                record["well_formed"] = well_formed_tests(scores, formed, cfg.significance)
        features.append(record)
    bar.close()
    evaluated = [r for r in features if "skipped" not in r]
    formed = [r["well_formed"]["steerable"] for r in evaluated if "well_formed" in r]
    return {
        "format": "mgsteer-eval-steer/1",
        "model": lm.name,
        "sae": str(loaded.path),
        "scorer": scorer.name,
        "alpha": cfg.alpha,
        "mode": cfg.mode,
        "halves": cfg.halves,
        "prompts": list(cfg.prompts),
        "seeds": list(cfg.seeds),
        "seconds": cfg.seconds,
        "significance": cfg.significance,
        "steerable_share": round(sum(r["steerable"] for r in evaluated) / len(evaluated), 4) if evaluated else None,
        "steerable_well_formed_share": round(sum(formed) / len(formed), 4) if formed else None,
        "evaluated": len(evaluated),
        "features": features,
    }


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """`eval_steer.json` and `eval_steer.html` (a sortable-at-a-glance table) in folder `out`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "eval_steer.json"
    json_path.write_text(json.dumps(report, indent=1))
    html_path = folder / "eval_steer.html"
    html_path.write_text(_html(report))
    return json_path, html_path


def _yes_no(ok: bool) -> str:
    return f"<td class={'yes' if ok else 'no'}>{'yes' if ok else 'no'}</td>"


def _html(report: dict) -> str:
    e = html.escape
    formed = report.get("steerable_well_formed_share") is not None
    rows = []
    for r in report["features"]:
        if "skipped" in r:
            rows.append(f"<tr><td>{r['id']}</td><td>{e(r['concept'])}</td><td colspan=7>{e(r['skipped'])}</td></tr>")
            continue
        cells = [f"<td>{r['id']}</td>", f"<td>{e(r['concept'])}</td>"]
        for b in BASELINES:
            t = r["vs"].get(b)
            cells.append(f"<td>{t['gain']:+.4f}</td><td>{t['p']:.3g}</td>" if t else "<td>–</td><td>–</td>")
        cells.append(_yes_no(r["steerable"]))
        if formed:
            cells.append(_yes_no(r["well_formed"]["steerable"]) if "well_formed" in r else "<td>–</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    share = report["steerable_share"]
    summary = (
        f"{report['evaluated']} features, {len(report['prompts'])} prompts × {len(report['seeds'])} seeds, "
        f"α = {report['alpha']}, scorer {e(report['scorer'])}: "
        + (f"{100 * share:.0f} % steerable" if share is not None else "nothing evaluated")
        + (f", {100 * report['steerable_well_formed_share']:.0f} % while the music stays music" if formed else "")
    )
    head = "".join(f"<th colspan=2>vs {b}</th>" for b in BASELINES)
    tail = "<th rowspan=2>steerable</th>" + ("<th rowspan=2>steerable, still music</th>" if formed else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mgsteer eval-steer</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:nth-child(2){{text-align:left}}
.yes{{background:#cfc}}.no{{background:#fdd}}</style></head><body>
<h1>Steering evaluation</h1><p>{summary}. Gain = mean score of the steered clip minus the baseline's;
p = one-sided Wilcoxon signed-rank over (prompt, seed) pairs. Model {e(report["model"])}, SAE {e(report["sae"])}.</p>
<table><tr><th rowspan=2>feature</th><th rowspan=2>concept</th>{head}{tail}</tr>
<tr>{"<th>gain</th><th>p</th>" * len(BASELINES)}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
