"""World labels: what the planted grammar's exact scorer says a feature's windows share.

For a world model (`mgsteer world train`) the truth about every window is computable: the
exact posterior of each planted attribute given the window's tokens and where it starts in its
clip. A label names one attribute value in the words of the world's prompts ("A minor",
"high register", "fast", "bright", "busy drums"), so the prompt baseline of eval-steer can
write it into a prompt the model understands; its score on a window is that value's posterior, and a feature
gets the labels whose mean posterior on its top windows most exceeds that on random windows.
This labeler reads tokens, not sound: it needs a store that kept them (every harvest of
generated clips does).
"""

from __future__ import annotations

import re

import numpy as np

from sae.labelers.base import Label, Labeler, LabelerError, WindowCodes, WindowSet
from sae.world.grammar import ATTRIBUTES, ExactScorer, attribute_values

TEMPLATES = {"key": "{}", "register": "{} register", "tempo": "{}", "timbre": "{}", "density": "{} drums"}
MIN_CONTRAST = 0.2  # a label's mean posterior on the top windows must exceed random windows' by this
# Grammar log-likelihood per token below which a clip is no longer the grammar's music (0 is
# music it writes with certainty, log(ε/V) ≈ −9.5 noise); steering choices keep above it too.
WELL_FORMED_LOGLIK = -1.0


def label_text(attribute: str, value: str) -> str:
    return TEMPLATES[attribute].format(value)


def parse_label(text: str) -> tuple[str, str] | None:
    """(attribute, value) of a world label, or None when the text is not one."""
    values = attribute_values()
    for attribute in ATTRIBUTES:
        pattern = "^" + re.escape(TEMPLATES[attribute]).replace(r"\{\}", "(.+)") + "$"
        match = re.match(pattern, text.strip())
        if match and match.group(1) in values[attribute]:
            return attribute, match.group(1)
    return None


class WorldLabeler(Labeler):
    name = "world"
    reads_tokens = True

    def __init__(self, codebook_size: int = 128) -> None:
        self.scorer = ExactScorer(codebook_size)

    def posteriors(self, codes: list[WindowCodes]) -> list[dict[str, dict[str, float]]]:
        return [self.scorer.posterior(w.codes, w.start) for w in codes]

    def label(self, windows: WindowSet) -> list[Label]:
        if windows.top_codes is None or windows.random_codes is None:
            raise LabelerError("the world labeler reads tokens: harvest generated clips of a world model", retry=False)
        top, rand = self.posteriors(windows.top_codes), self.posteriors(windows.random_codes)
        if not top or not rand:
            return []
        out = []
        for attribute in ATTRIBUTES:
            for value in self.scorer.values[attribute]:
                t = np.mean([p[attribute][value] for p in top])
                r = np.mean([p[attribute][value] for p in rand])
                if t - r >= MIN_CONTRAST:
                    evidence = {"posterior_top": round(float(t), 3), "posterior_random": round(float(r), 3)}
                    out.append(Label(label_text(attribute, value), float(t - r), evidence))
        return sorted(out, key=lambda lab: -lab.score)

    def score_codes(self, label: str, codes: list[WindowCodes]) -> np.ndarray | None:
        parsed = parse_label(label)
        if parsed is None:
            return None
        attribute, value = parsed
        return np.array([p[attribute][value] for p in self.posteriors(codes)])

    def code_quality(self, codes: list[WindowCodes]) -> dict[str, np.ndarray]:
        """`grammar_loglik`: the best attributes' log-likelihood per token (0 for music the
        grammar writes with certainty, log(ε/V) ≈ −9.5 for noise); `token_entropy`: bits of
        each codebook's token histogram, averaged over codebooks (grammatical clips use few)."""
        loglik = [self.scorer.loglik_per_token(w.codes, w.start) for w in codes]
        return {"grammar_loglik": np.array(loglik), "token_entropy": np.array([_entropy(w.codes) for w in codes])}

    def well_formed(self, quality: dict[str, np.ndarray]) -> np.ndarray:
        return quality["grammar_loglik"] >= WELL_FORMED_LOGLIK


def _entropy(codes: np.ndarray) -> float:
    bits = []
    for row in codes:
        p = np.bincount(row) / len(row)
        p = p[p > 0]
        bits.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(bits))
