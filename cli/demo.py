"""The offline demo behind `make demo`: the whole steer-a-feature story in a planted music world.

A random-weight MusicGen can only show the plumbing, so the demo first trains a small MusicGen
on a grammar of melodies whose key, register, tempo, timbre and drums are chosen per clip and
named in the prompt (docs/WORLD.md); the first run trains it into `OUT/world`, later runs reuse
it. Then it harvests activations while that model plays prompted clips, trains a TopK SAE,
finds the feature that best detects an audible attribute on held-out windows, labels it (and
the busiest features) with the world's exact scorer and music descriptors, writes the feature
browser, and renders a prompt that does not name that attribute twice, plain and steered, with
the same seed: the difference is the steering alone, and the exact scorer says how far the
attribute moved.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import MgsteerError
from engine.levels import match_loudness
from engine.model import LoadedModel, load_musicgen
from engine.params import Knob
from engine.presets import KnobPreset, Preset, save_preset
from engine.render import render, write_wav
from engine.steering import FeatureSteer, SteeringSpec
from engine.tokenloop import SamplingConfig
from sae.browse import write_browser
from sae.catalog import best_label, load_catalog
from sae.descriptors import describe
from sae.examples import ExampleConfig
from sae.files import load_sae
from sae.label import LabelConfig, choose_features, label_features
from sae.labelers.world import label_text
from sae.world.detect import feature_detection
from sae.world.grammar import Attributes, ExactScorer, most_probable
from sae.world.pipeline import (
    SteerSelection,
    WorldSAEConfig,
    choose_steering,
    detected,
    harvest_and_train,
    ranked_attributes,
)
from sae.world.train import WorldTrainConfig, WorldTrainer, saved_state

# what the demo may steer: heard without a score sheet (a key needs a trained ear)
DEMO_ATTRIBUTES = ("register", "timbre", "tempo", "density")
# what the descriptors labeler measures for each attribute (name, unit)
HEARD_AS = {
    "register": ("note", "median note"),
    "timbre": ("centroid_hz", "Hz spectral centroid"),
    "tempo": ("onset_rate", "onsets/s"),
    # busy drums hit on every note, sparse ones twice a bar: the hits are most of the onsets
    # (the snare's noise makes sparse bars as percussive by energy share as busy ones)
    "density": ("onset_rate", "onsets/s"),
    "key": ("key", "key estimate"),
}


DEMO_SELECTION = SteerSelection(
    prompts=2, seeds=(100, 101), seconds=2.0, alphas=(0.5, 1.0, 2.0, 4.0), candidates=1, aligned=1, margin=0
)


@dataclass(frozen=True)
class DemoConfig:
    # 1300 steps of 8 one-second clips, then 700 of 8 four-second ones: 3.4 min on a 2-core CPU
    # where 2000 steps of 4 s clips take 6.3 min, and it follows the prompt better (key 0.96
    # against 0.82, tempo 0.98 against 0.90) at a slightly lower grammar log-likelihood per
    # token (−0.44 against −0.39 on fully prompted clips). docs/WORLD.md has the table.
    world: WorldTrainConfig = field(
        default_factory=lambda: WorldTrainConfig(steps=2000, batch_size=8, short_steps=1300)
    )
    sae: WorldSAEConfig = field(default_factory=lambda: WorldSAEConfig(clips=64, steps=600))
    # strengths tried, weakest first: the demo steers with the first that moves the attribute
    # and keeps the music grammatical. A push is α × the feature's largest activation: on the
    # grammar-3 demo world α 0.5 moves the melody two octaves down where α 1 already changes its
    # key (F minor → C minor) and costs twice the grammar log-likelihood (−0.28 → −0.52)
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    seconds: float = 5.0
    seed: int = 0
    # What to steer is chosen on selection pairs of its own (neutral prompts × seeds 100, 101:
    # never the demo's clip), an attribute at a time, best detected first: the feature that
    # best detects a value need not be the one that makes it (a detector of note onsets does
    # not make music fast), and a choice that holds on one world may not on another.
    selection: SteerSelection = field(default_factory=lambda: DEMO_SELECTION)
    clip_seeds: int = 4  # seeds tried for the demo's clip, for one that does not have the value already


def world_model(folder: Path, cfg: WorldTrainConfig, progress: bool = False) -> LoadedModel:
    """The world model in `folder`: reused when it was trained to the end with `cfg`, resumed
    when it was interrupted, trained afresh otherwise."""
    state = saved_state(folder) if folder.is_dir() else None
    same = state is not None and state.get("config") == asdict(cfg)
    if same and state["step"] >= cfg.steps:
        print(f"[1/5] reusing the world model in {folder} ({cfg.steps} training steps)")
    else:
        print(f"[1/5] training the world model into {folder}: {cfg.steps} steps, once (later runs reuse it)")
        WorldTrainer(folder, cfg).run(resume=same, overwrite=not same, progress=progress)
    return load_musicgen(str(folder), "cpu")


def run_demo(out: Path, cfg: DemoConfig | None = None, progress: bool = False) -> dict:
    cfg = cfg or DemoConfig()
    lm = world_model(out / "world", cfg.world, progress)
    shutil.rmtree(out / "acts", ignore_errors=True)  # the last run's, maybe from another world: harvest afresh
    store, sae_dir, last = harvest_and_train(lm, out, cfg.sae, progress)
    loaded = load_sae(sae_dir, lm.device)
    print(
        f"[2/5] harvested layer {cfg.sae.layer} while the world model played {cfg.sae.clips} prompted clips; "
        f"trained a {loaded.cfg.d_sae}-feature TopK SAE (k={loaded.cfg.k}): FVU {last['fvu']:.3f}; saved to {sae_dir}"
    )

    detection = feature_detection(store, loaded, cfg.sae.layer, frame_rate=lm.frame_rate)
    if not detected(detection):
        raise MgsteerError("no attribute value could be measured on held-out windows: harvest more or longer clips")
    prompt = "melody"  # names no attribute: the model chooses, the steering pushes
    scorer = ExactScorer(lm.codebook_size)
    pick = choose_demo_steer(lm, loaded, scorer, detection, prompt, cfg)
    attribute, value, feature, plain = pick["attribute"], pick["value"], pick["feature"], pick["plain"]
    concept = label_text(attribute, value)
    heard = scorer.posterior(plain.codes.numpy())
    found = detection["values"][f"{attribute}={value}"]
    window = f"{detection['window_s']:g} s windows"
    print(
        f"[3/5] feature {feature} ({pick['source']}) for '{concept}': the best detector of it reads its "
        f"{found['pool']} over {window} at detection AUROC {found['auroc_held_out']:.2f} on held-out windows"
    )

    names = ("world", "descriptors")
    chosen = tuple(dict.fromkeys([feature, *choose_features(loaded, LabelConfig(limit=5))]))
    examples = ExampleConfig(top_n=6, window_s=1.0, negatives=10, seed=cfg.seed)
    label_features(sae_dir, out / "acts", lm, LabelConfig(names, features=chosen, examples=examples), progress=progress)
    page = write_browser(sae_dir, out / "features.html")
    records = {r["id"]: r for r in load_catalog(sae_dir)["features"]}
    catalog = {f: record["labels"] for f, record in records.items()}
    print(f"[4/5] labeled {len(chosen)} features with the world's exact scorer and music descriptors: {page.resolve()}")
    for f in chosen:
        said = [f"{n}: {', '.join(lab['label'] for lab in catalog.get(f, {}).get(n, [])[:3])}" for n in names]
        text = "; ".join(line for line in said if not line.endswith(": ")) or "(nothing stands out)"
        print(f"      feature {f}: {text}")

    steered, alpha, met = pick["steered"], pick["alpha"], pick["met"]
    moved = scorer.posterior(steered.codes.numpy())
    before, after = heard[attribute][value], moved[attribute][value]
    others = also_changed(most_probable(heard), most_probable(moved), attribute)
    quality = [scorer.loglik_per_token(r.codes.numpy()) for r in (plain, steered)]
    described, unit = listen(attribute, [plain, steered])
    # A/B only means something at one loudness: the louder clip is turned down to the other's.
    (plain_audio, steered_audio), loudness = match_loudness([plain.audio, steered.audio])
    plain_path = write_wav(out / "plain.wav", plain_audio, plain.sample_rate)
    steered_path = write_wav(out / "steered.wav", steered_audio, steered.sample_rate)
    changed = (plain.codes != steered.codes).float().mean().item()
    strengths = ", ".join(f"{a:g}" for a in pick["alphas"])
    why = (f"the weakest of {strengths} that moves it and keeps the grammar" if met
           else f"none of {strengths} both moves it and keeps the grammar: the closest")  # fmt: skip
    print(
        f"[5/5] rendered '{prompt}' for {plain.seconds:.1f} s, seed {pick['seed']}: plain, and with feature "
        f"{feature} at α {alpha:g} ({why})"
    )
    if not met:
        print("      this world's SAE steered none of its attributes on this clip: " + pick["why"])
    print(
        f"      exact scorer, P({concept}): {before:.2f} plain → {after:.2f} steered "
        f"({100 * changed:.0f}% of tokens changed)"
    )
    print(f"      grammar log-likelihood per token: {quality[0]:.2f} plain → {quality[1]:.2f} steered (noise: −9.5)")
    side = ", ".join(f"{label_text(a, was)} → {label_text(a, now)}" for a, (was, now) in others.items())
    print(f"      exact scorer, other attributes: {side or 'unchanged'}")
    print(f"      descriptors, {unit}: {_shown(described[0])} → {_shown(described[1])}")
    print(
        f"      loudness (RMS): plain {loudness[0]:.1f} dBFS, steered {loudness[1]:.1f} dBFS; both written at "
        f"{min(loudness):.1f} dBFS, through the soft limiter (no sample at full scale)"
    )
    preset = write_preset(out, prompt, (feature, concept, alpha), chosen, records)
    print(f"plain WAV:   {plain_path.resolve()}")
    print(f"steered WAV: {steered_path.resolve()}")
    print(
        f"again by hand: mgsteer render --model {out / 'world'} --sae {sae_dir} --prompt {prompt} "
        f"--steer {feature}={alpha:g} --seconds {cfg.seconds:g} --seed {pick['seed']} --out steered.wav"
    )
    print(f"in the window, its features on knobs: mgsteer gui --preset {preset} --no-audio   (or without --no-audio)")
    target = {
        "attribute": attribute,
        "value": value,
        "feature": feature,
        "source": pick["source"],
        "detection_auroc": found["auroc_held_out"],
        "alpha": alpha,
        "seed": pick["seed"],
        "reached_and_grammatical": met,
        "selection": pick["selection"],
    }
    return {
        "sae": sae_dir,
        "plain": plain_path,
        "steered": steered_path,
        "changed": changed,
        "features": list(chosen),
        "browser": page,
        "preset": preset,
        "target": target,
        "grammar_loglik": {"plain": quality[0], "steered": quality[1]},
        "posterior": {"plain": before, "steered": after},
        "also_changed": others,
        "heard": {"by": "descriptors", "unit": unit, "plain": described[0], "steered": described[1]},
        "loudness_dbfs_before_matching": {"plain": loudness[0], "steered": loudness[1]},
    }


def write_preset(out: Path, prompt: str, steered: tuple[int, str, float], features: tuple[int, ...],
                 records: dict[int, dict]) -> Path:  # fmt: skip
    """`OUT/preset.json`: the demo's model, SAE and prompt, its steered feature on the first knob
    (named by what it steers, set at the α the demo used) and the other labelled features on the
    next ones (named by their best-validated label, as the browser shows them), every knob
    bipolar, so the window opens on what the demo found."""
    feature, concept, alpha = steered
    reach = max(1.0, 2 * abs(alpha))
    first = Knob(lo=-reach, hi=reach)
    knobs = [KnobPreset(f"{concept} #{feature}", ((feature, 1.0),), (-reach, reach), "linear", first.value_for(alpha))]
    for other in features:
        if other != feature and len(knobs) < 8:  # the window's default bank
            best = best_label(records.get(other, {}))[0]
            knobs.append(KnobPreset(f"{best or 'feature'} #{other}", ((other, 1.0),), (-1.0, 1.0), "linear", 0.5))
    preset = Preset(name="what the demo found", model="./world", sae="./sae", prompt=prompt, knobs=tuple(knobs))
    return save_preset(preset, out / "preset.json")


def choose_demo_steer(lm: LoadedModel, loaded, scorer: ExactScorer, detection: dict, prompt: str, cfg: DemoConfig):
    """What the demo steers, and its clip. The audible attributes, best detected first: each
    one's (value, feature, α) is chosen on selection pairs (`choose_steering`), then played on
    the demo's clip (the first seed whose plain clip lacks the value) from that α up; the first
    that reaches its value with the music kept wins. If none does, the best-detected audible
    value the plain clip lacks is pushed at every α, and the closest grammatical clip is kept
    (with `why` saying so)."""
    sel, tried, plains = cfg.selection, [], {}

    def plain_clip(seed: int):
        if seed not in plains:
            plains[seed] = render(lm, prompt, cfg.seconds, SamplingConfig(seed=seed))
        return plains[seed]

    for attribute in ranked_attributes(detection, DEMO_ATTRIBUTES):
        choice = choose_steering(lm, loaded, detection, attribute, sel)["chosen"]
        if choice is None or not choice["moved_share"]:
            tried.append(f"{attribute}: no feature moved its selection pairs")
            print(f"      selection: {tried[-1]}")
            continue
        value, feature = choice["value"], choice["feature"]
        print(f"      selection: {attribute}: feature {feature} ({choice['source']}) at α {choice['alpha']:g} moved "
              f"{choice['moved_share']:.0%} of {len(sel.seeds) * sel.prompts} pairs toward {value}")  # fmt: skip
        alphas = tuple(a for a in cfg.alphas if a >= choice["alpha"]) or (choice["alpha"],)
        for seed in range(cfg.seed, cfg.seed + cfg.clip_seeds):
            plain = plain_clip(seed)
            if scorer.posterior(plain.codes.numpy())[attribute][value] >= 0.5:
                continue  # this clip has the value already: nothing to show
            steered, alpha, met = _steer(lm, loaded, scorer, prompt, alphas, cfg.seconds, seed,
                                         (attribute, value, feature))  # fmt: skip
            if met:
                return {"attribute": attribute, "value": value, "feature": feature, "source": choice["source"],
                        "plain": plain, "steered": steered, "alpha": alpha, "alphas": alphas, "met": met,
                        "seed": seed, "selection": choice}  # fmt: skip
            tried.append(f"{attribute}: feature {feature} did not move the clip of seed {seed}")
            break
    plain = plain_clip(cfg.seed)
    heard = scorer.posterior(plain.codes.numpy())
    measured = detected(detection)
    lacking = [r for r in measured if r[1] in DEMO_ATTRIBUTES and heard[r[1]][r[2]] < 0.5]
    _, attribute, value, feature = (lacking or measured)[0]
    steered, alpha, met = _steer(lm, loaded, scorer, prompt, cfg.alphas, cfg.seconds, cfg.seed,
                                 (attribute, value, feature))  # fmt: skip
    return {"attribute": attribute, "value": value, "feature": feature, "source": "best detector", "plain": plain,
            "steered": steered, "alpha": alpha, "alphas": cfg.alphas, "met": met, "seed": cfg.seed, "selection": None,
            "why": "; ".join(tried) or "no attribute had a candidate"}  # fmt: skip


def _steer(lm: LoadedModel, loaded, scorer: ExactScorer, prompt: str, alphas: tuple[float, ...], seconds: float,
           seed: int, target: tuple[str, str, int]):  # fmt: skip
    """The clip steered with `target`'s (attribute, value, feature) at the weakest α whose music
    reaches the value (posterior ≥ 0.5) above the selection's quality floor; failing that, the
    grammatical one that comes closest (the weakest α if none stays grammatical). Returns
    (rendered, α, whether it reached the value above the floor)."""
    attribute, value, feature = target
    floor = SteerSelection().quality_floor
    tried = []
    for alpha in alphas:
        out = render(lm, prompt, seconds, SamplingConfig(seed=seed), loaded,
                     SteeringSpec((FeatureSteer(feature, alpha),)))  # fmt: skip
        grammatical = scorer.loglik_per_token(out.codes.numpy()) >= floor
        reached = scorer.posterior(out.codes.numpy())[attribute][value]
        if grammatical and reached >= 0.5:
            return out, alpha, True
        tried.append((grammatical, reached if grammatical else -alpha, out, alpha))
    _, _, out, alpha = max(tried, key=lambda t: (t[0], t[1]))
    return out, alpha, False


def also_changed(plain: Attributes, steered: Attributes, attribute: str) -> dict[str, tuple[str, str]]:
    """(plain, steered) value of each other attribute the steer changed: a feature can carry a
    conjunction (a low register with a dark timbre), and the listener should know what else
    moved."""
    was, now = plain.as_dict(), steered.as_dict()
    return {name: (was[name], now[name]) for name in was if name != attribute and was[name] != now[name]}


def listen(attribute: str, clips: list) -> tuple[list, str]:
    """(what the descriptors labeler hears of `attribute` in each clip, its unit)."""
    measure, unit = HEARD_AS[attribute]
    return [getattr(describe(c.audio, c.sample_rate), measure) for c in clips], unit


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value) or "no clear pitch"
