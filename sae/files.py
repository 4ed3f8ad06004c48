"""SAE folders in SAELens' layout, plus our feature statistics beside them.

A folder holds `cfg.json` + `sae_weights.safetensors` (readable by SAELens and by anything
that reads SAELens) and `feature_stats.safetensors` (firing rate, mean and max activation β,
which steering needs). Every way a folder can be wrong is a one-line `MgsteerError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine import limits
from engine.errors import MgsteerError
from engine.inputs import read_json_object
from engine.model import LoadedModel
from engine.staged import settle, staged
from sae.topk import SAEConfig, TopKSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
STATS_FILE = "feature_stats.safetensors"
REQUIRED_KEYS = ("architecture", "d_in", "d_sae", "k", "hook_name", "hook_layer", "model_name")
WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
STAT_NAMES = ("firing_rate", "mean_activation", "max_activation")
MAX_D_IN = 1 << 16  # musicgen-large's residual is 2048 wide
MAX_D_SAE = 1 << 22  # 4 M features: a ×2048 dictionary on musicgen-large


@dataclass
class FeatureStats:
    """Per-feature statistics over the activations the SAE was measured on.

    firing_rate: share of frames on which the feature is non-zero; mean_activation: mean of its
    non-zero values; max_activation: β, the largest value seen — the unit of a steering α;
    firing_rate_clip: share of clips on which it fires at least once (the paper's filter).
    """

    firing_rate: torch.Tensor
    mean_activation: torch.Tensor
    max_activation: torch.Tensor
    firing_rate_clip: torch.Tensor | None = None

    @classmethod
    def from_codes(cls, codes: torch.Tensor) -> FeatureStats:
        """Statistics of SAE codes `[rows, d_sae]`."""
        acc = StatsAccumulator(codes.shape[-1], codes.device)
        acc.add(codes)
        return acc.result()

    def tensors(self) -> dict[str, torch.Tensor]:
        names = (*STAT_NAMES, "firing_rate_clip") if self.firing_rate_clip is not None else STAT_NAMES
        return {name: getattr(self, name).detach().float().cpu().contiguous() for name in names}


class StatsAccumulator:
    """Feature statistics gathered a batch of codes at a time, so no run of codes need fit in
    memory at once; clips are counted when the caller reports which features fired in each."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu") -> None:
        self.fires = torch.zeros(d_sae, device=device)
        self.total = torch.zeros(d_sae, device=device)
        self.peak = torch.zeros(d_sae, device=device)
        self.clip_fires = torch.zeros(d_sae, device=device)
        self.rows = self.clips = 0

    def add(self, codes: torch.Tensor) -> torch.Tensor:
        """Account for codes `[rows, d_sae]`; returns which of them are active."""
        codes = codes.float()
        active = codes > 0
        self.fires += active.sum(0)
        self.total += codes.sum(0)
        self.peak = torch.maximum(self.peak, codes.max(0).values)
        self.rows += codes.shape[0]
        return active

    def add_clip(self, fired: torch.Tensor) -> None:
        """One clip, given the features that fired anywhere in it."""
        self.clip_fires += fired
        self.clips += 1

    def result(self) -> FeatureStats:
        return FeatureStats(
            firing_rate=(self.fires / max(self.rows, 1)).cpu(),
            mean_activation=(self.total / self.fires.clamp(min=1)).cpu(),
            max_activation=self.peak.cpu(),
            firing_rate_clip=(self.clip_fires / self.clips).cpu() if self.clips else None,
        )


@dataclass
class LoadedSAE:
    """An SAE read from a folder, with its statistics if the folder has them."""

    sae: TopKSAE
    stats: FeatureStats | None
    path: Path

    @property
    def cfg(self) -> SAEConfig:
        return self.sae.cfg

    def require_stats(self) -> FeatureStats:
        if self.stats is None:
            raise MgsteerError(f"SAE '{self.path}' has no {STATS_FILE}; steering needs each feature's max activation β")
        return self.stats

    def check_feature(self, feature: int) -> int:
        if not isinstance(feature, int) or not 0 <= feature < self.cfg.d_sae:
            raise MgsteerError(f"unknown feature id {feature}: SAE '{self.path}' has features 0..{self.cfg.d_sae - 1}")
        return feature


def cfg_json(cfg: SAEConfig) -> dict:
    """SAELens keys (TopK flavour) plus nothing that SAELens would misread."""
    return {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": cfg.k},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "finetuning_scaling_factor": False,
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "hook_layer": cfg.hook_layer,
        "hook_head_index": None,
        "prepend_bos": False,
        "dtype": "float32",
        "device": "cpu",
    }


def save_sae(sae: TopKSAE, folder: str | Path, stats: FeatureStats | None = None) -> Path:
    """Write the SAE (float32) and, if given, its statistics, as one (engine.staged: a kill
    never leaves new weights beside an old config); returns the folder."""
    folder = Path(folder)
    with staged(folder) as stage:
        (stage / CFG_FILE).write_text(json.dumps(cfg_json(sae.cfg), indent=2) + "\n")
        weights = {name: getattr(sae, name).detach().float().cpu().contiguous() for name in WEIGHT_NAMES}
        save_file(weights, str(stage / WEIGHTS_FILE))
        if stats is not None:
            save_file(stats.tensors(), str(stage / STATS_FILE))
    return folder


def load_sae(folder: str | Path, device: torch.device | str = "cpu") -> LoadedSAE:
    """Read and validate an SAE folder; the SAE comes back in eval mode, float32, on `device`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MgsteerError(f"SAE folder '{folder}' does not exist")
    settle(folder)  # a save a kill interrupted: finished or dropped
    cfg = _read_cfg(folder)
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    _check_shapes(folder / WEIGHTS_FILE, expected)  # before a byte of weights is read or allocated
    weights = _read_tensors(folder / WEIGHTS_FILE, WEIGHT_NAMES)
    sae = TopKSAE(cfg)
    for name in expected:
        if not torch.isfinite(weights[name]).all():
            raise MgsteerError(f"SAE '{folder}': {name} contains NaN or inf")
    sae.load_state_dict({k: v.float() for k, v in weights.items()})
    stats = None
    if (folder / STATS_FILE).exists():
        tensors = _read_tensors(folder / STATS_FILE, STAT_NAMES)
        names = [n for n in (*STAT_NAMES, "firing_rate_clip") if n in tensors]
        for name in names:
            if tuple(tensors[name].shape) != (cfg.d_sae,):
                raise MgsteerError(f"SAE '{folder}': {STATS_FILE} {name} has shape {tuple(tensors[name].shape)}")
            if not torch.isfinite(tensors[name]).all() or (tensors[name] < 0).any():
                raise MgsteerError(
                    f"SAE '{folder}': {STATS_FILE} {name} holds NaN, inf or negative values; "
                    "measure them again (mgsteer train writes them)"
                )
        stats = FeatureStats(**{name: tensors[name].float().to(device) for name in names})
    sae = sae.to(device).eval().requires_grad_(False)
    return LoadedSAE(sae=sae, stats=stats, path=folder)


def _read_cfg(folder: Path) -> SAEConfig:
    path = folder / CFG_FILE
    if not path.is_file():
        raise MgsteerError(f"'{folder}' is not an SAE folder: no {CFG_FILE}")
    raw = read_json_object(path, "SAE config")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise MgsteerError(f"{path} lacks key(s) {', '.join(missing)}")
    if raw["architecture"] != "topk":
        raise MgsteerError(f"{path}: architecture '{raw['architecture']}' is not supported (only topk)")
    try:
        return SAEConfig(
            d_in=limits.integer(raw["d_in"], f"{path} d_in", 1, MAX_D_IN),
            d_sae=limits.integer(raw["d_sae"], f"{path} d_sae", 1, MAX_D_SAE),
            k=limits.integer(raw["k"], f"{path} k", 1, MAX_D_SAE),
            hook_layer=limits.integer(raw["hook_layer"], f"{path} hook_layer", 0, 1000),
            model_name=str(raw["model_name"]),
        )
    except (TypeError, ValueError) as exc:
        raise MgsteerError(f"{path}: {exc}") from exc


def _check_shapes(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The weights file holds exactly `expected`'s tensors in those shapes: read from its
    header, so a file that disagrees with cfg.json is refused before anything is allocated."""
    if not path.is_file():
        raise MgsteerError(f"missing {path.name} in SAE folder '{path.parent}'")
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise MgsteerError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from exc
    missing = [name for name in expected if name not in shapes]
    extra = [name for name in shapes if name not in expected]
    if missing or extra:
        said = [f"lacks {', '.join(missing)}"] * bool(missing) + [f"holds unknown {', '.join(extra[:4])}"] * bool(extra)
        raise MgsteerError(f"{path} {' and '.join(said)} (an SAE holds {', '.join(expected)})"[:300])
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise MgsteerError(f"SAE '{path.parent}': {name} has shape {shapes[name]} but cfg.json implies {shape}")


def _read_tensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MgsteerError(f"missing {path.name} in SAE folder '{path.parent}'")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MgsteerError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from exc
    missing = [name for name in names if name not in tensors]
    if missing:
        raise MgsteerError(f"{path} lacks tensor(s) {', '.join(missing)}")
    return tensors


def check_sae_fits(loaded: LoadedSAE, lm: LoadedModel) -> None:
    """An SAE must read the residual stream it was trained on: same width, an existing layer."""
    cfg = loaded.cfg
    if cfg.d_in != lm.hidden_size:
        raise MgsteerError(
            f"SAE '{loaded.path}' has d_in {cfg.d_in} but model '{lm.spec}' has hidden size {lm.hidden_size}; "
            f"it was trained on {cfg.model_name}"
        )
    if not 0 <= cfg.hook_layer < lm.num_layers:
        raise MgsteerError(
            f"SAE '{loaded.path}' reads layer {cfg.hook_layer} but model '{lm.spec}' has decoder layers "
            f"0..{lm.num_layers - 1}"
        )
