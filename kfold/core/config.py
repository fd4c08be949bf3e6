"""One frozen dataclass per run: loaded from a file, overridden from the command line, type-checked.

Unknown keys are errors. The resolved config (plus library versions) is written next to the run's
outputs, so any number in a report can be traced to the settings and seed that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, unknown_name
from .metrics import METRICS
from .variants import ACTIVATIONS, POOLS, get_variant

#: Entity representations (``--marker``); kfold.encoding inserts them (its module docstring shows each one).
MARKERS = ("none", "entity_marker", "entity_marker_punct", "typed_entity_marker", "typed_entity_marker_punct",
           "entity_mask")
#: The markers that print each entity's type, so they need data with entity types.
TYPED_MARKERS = ("typed_entity_marker", "typed_entity_marker_punct")

CHOICES: dict[str, tuple[str, ...]] = {
    "format": ("auto", "competition", "klue", "semeval", "generic"),
    "offsets": ("repair", "strict"),
    "too_far": ("two-windows", "error"),
    "overlap": ("markers", "error"),
    "bad_rows": ("error", "skip"),
    "group": ("none", "duplicates"),
    "marker": MARKERS,
    "activation": ("",) + ACTIVATIONS,
    "pool": ("",) + POOLS,
    "loss": ("ce", "focal"),
    "class_weights": ("none", "balanced"),
    "augment": ("none", "swap"),
    "cls_vector": ("auto", "first", "mean"),
    "tta": ("none", "swap"),
    "adversarial": ("none", "fgm", "awp"),
    "pseudo_targets": ("soft", "hard"),
    "pseudo_folds": ("honest", "naive"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "attn_implementation": ("auto", "eager", "sdpa"),
    "metric": METRICS,
    "device": ("auto", "cpu", "cuda", "mps"),
}


#: The trackers ``--report-to`` knows (kfold.tracking), each an optional extra of the same name.
TRACKERS = ("mlflow", "tensorboard", "wandb")


@dataclass(frozen=True)
class Config:
    """Every setting of one k-fold run (one variant x backbone x training seed)."""

    # data ("" data means the generated demo data)
    data: str = ""
    test: str = ""
    labels: str = ""
    format: str = "auto"
    columns: str = ""
    # entity offsets that do not match their text: moved to the nearest occurrence ("repair") or refused
    offsets: str = "repair"
    repair_window: int = 5
    no_relation: str = ""
    # entities further apart than max_len: two windows joined by the separator, or an error
    too_far: str = "two-windows"
    # subject and object spans that share characters: markers at both spans' positions, or an error
    overlap: str = "markers"
    # training rows with problems that cannot be repaired: refuse the file, or train without them (listed)
    bad_rows: str = "error"
    # folds: which rows go to which fold (separate from the training seed)
    folds: int = 5
    fold_seed: int = 42
    group: str = "none"
    # model
    variant: str = "split"
    backbone: str = "minilm"
    marker: str = "entity_marker_punct"
    max_len: int = 256
    activation: str = ""
    pool: str = ""
    # the sentence vector: "auto" = the pooler when the checkpoint has trained pooler weights, else the first
    # token's hidden state; "first" = always the first token; "mean" = mean of all tokens (sentence-transformers)
    cls_vector: str = "auto"
    dropout: float = 0.1
    # the encoder's own dropout, overriding its checkpoint's config (-1 = keep the checkpoint's value): on hidden
    # states (hidden_dropout_prob) and on attention probabilities (attention_probs_dropout_prob)
    backbone_dropout: float = 0.0
    attention_dropout: float = 0.0
    # optimisation (the defaults are the measured best for the packaged MiniLM on a CPU: the minilm-cpu preset,
    # kfold/core/presets/minilm-cpu.toml, says where each was measured)
    epochs: int = 5
    batch_size: int = 32
    grad_accum: int = 1
    auto_micro_batch: bool = False
    lr: float = 1e-4
    head_lr: float = 0.0
    # layer-wise learning-rate decay: the top encoder layer trains at lr, each layer below at decay x the one
    # above, the embeddings at decay ** num_layers x lr (1.0 = one lr for the whole backbone)
    layer_lr_decay: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    ema: float = 0.0
    # average the weights at the ends of the last N epochs (all of them when there are fewer; stochastic weight
    # averaging over epoch ends); the average replaces best-epoch selection and is evaluated, used for test, saved
    average_epochs: int = 3
    # score the validation rows after every epoch (the training curves); with average_epochs no epoch is chosen
    # on them, so switching this off only saves time (the average is still scored)
    epoch_scores: bool = True
    loss: str = "ce"
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    # R-Drop: each training row goes through the model twice (two dropout masks) and the loss adds
    # rdrop x the symmetric KL between the two predictions (0 = off; doubles the cost of a step)
    rdrop: float = 0.0
    class_weights: str = "none"
    # adversarial training (kfold.training._adversarial): one perturbation per optimizer step from the whole batch's
    # gradient, a second pass over the batch at the perturbed point, then the exact weights back. fgm moves the word
    # embeddings by adv_eps along their gradient (L2 norm over the matrix); awp moves every weight tensor by adv_lr
    # x its own norm along its gradient, each element at most adv_eps x its size. -1 = the method's default eps
    # (fgm 1.0, awp 0.01); from epoch adv_start_epoch (1-based) on, 0 = the method's default (fgm 1, awp 2: AWP
    # from the first epoch made MiniLM predict one label for every SemEval row after epoch 1, docs/techniques.md)
    adversarial: str = "none"
    adv_eps: float = -1.0
    adv_lr: float = 1.0
    adv_start_epoch: int = 0
    # pseudo-labels (kfold.training._pseudo): test rows labelled by teachers (runs or blend files of this workdir;
    # several: the mean of their probabilities) join the training part of every fold and of the refit, never a
    # validation part. Fold k's rows come from the teachers' models that never saw fold k's validation rows
    # (pseudo_folds "honest"); "naive" gives every fold the teachers' full-data predictions, which leak those rows'
    # labels into the OOF estimate (kept to measure that leak). Rows whose top probability is at least
    # pseudo_threshold, at most pseudo_max_share x the part's real training rows (the most confident first, each
    # label keeping its share), as the teachers' probabilities ("soft") or their top label ("hard"), each row's
    # loss weighted by pseudo_weight (real rows 1). pseudo_from is a runtime key: the teachers' probabilities'
    # digest names the run (pseudo=<digest>) and is checked on resume.
    pseudo_from: tuple = ()
    pseudo_threshold: float = 0.9
    pseudo_max_share: float = 0.5
    pseudo_weight: float = 1.0
    pseudo_targets: str = "soft"
    pseudo_folds: str = "honest"
    # entity swap (labels with directions, e.g. SemEval): extra training rows / a second prediction
    augment: str = "none"
    tta: str = "none"
    # speed and memory
    precision: str = "auto"
    grad_checkpointing: bool = False
    compile: bool = False
    # the attention kernel: "auto" = transformers' default (fused SDPA) except bf16 on the CPU, where the plain
    # ("eager") attention trains faster (benchmarks/attention_cpu.py); the same computation either way
    attn_implementation: str = "auto"
    length_grouping: bool = True
    eval_batch_size: int = 64
    device: str = "auto"
    threads: int = 0
    # where the parts of a run (its folds, its refit) train: in this process ("none"), side by side on a Ray
    # runtime of its own on this machine ("local"), on a Ray cluster (HOST:PORT), or chosen ("auto": measured on a
    # CPU machine); see kfold.training._choose
    cluster: str = "auto"
    gpus_per_fold: float = -1.0
    cpus_per_fold: int = 0
    max_parallel: int = 0
    retries: int = 3
    # selection and reproducibility
    metric: str = "accuracy"
    seed: int = 1
    save_models: bool = False
    # after the k folds, one more model on every training row predicts the test rows (runs/<run>/refit/)
    refit: bool = False
    # trackers the driver sends each run to (kfold.tracking; runtime settings, never part of a run's name or
    # identity): comma-separated names of TRACKERS, the MLflow tracking URI ("" = MLFLOW_TRACKING_URI, else
    # MLflow's default local store) and the W&B project
    report_to: str = ""
    mlflow_uri: str = ""
    wandb_project: str = "rekfold"

    def __post_init__(self) -> None:
        # a list from a config file or a run's config.json: kept as a tuple (the config is frozen and hashable)
        raw = () if self.pseudo_from is None else self.pseudo_from
        if not isinstance(raw, (str, list, tuple)):
            raise ConfigError(f"pseudo_from = {raw!r}: expected run names or blend files (strings)")
        sources = (raw,) if isinstance(raw, str) else tuple(raw)
        if not all(isinstance(s, str) and s.strip() for s in sources):
            raise ConfigError(f"pseudo_from = {self.pseudo_from!r}: expected run names or blend files (strings)")
        object.__setattr__(self, "pseudo_from", sources)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in CHOICES and value not in CHOICES[f.name]:
                raise unknown_name(f.name.replace("_", "-"), value, [c for c in CHOICES[f.name] if c])
        get_variant(self.variant)
        if self.repair_window < 0:
            raise ConfigError(f"repair_window = {self.repair_window}: expected 0 or more characters")
        positive = ("folds", "max_len", "epochs", "batch_size", "grad_accum", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected a positive integer")
        if self.folds < 2:
            raise ConfigError(f"folds = {self.folds}: expected at least 2")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing = {self.label_smoothing}: expected 0 <= x < 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout = {self.dropout}: expected 0 <= x < 1")
        for name in ("backbone_dropout", "attention_dropout"):
            if getattr(self, name) != -1.0 and not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected -1 (the checkpoint's value) or 0 <= x < 1")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_ratio = {self.warmup_ratio}: expected 0 <= x <= 1")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema = {self.ema}: expected 0 (off) or a decay 0 < x < 1, e.g. 0.99")
        if self.adv_eps != -1.0 and not self.adv_eps > 0:
            raise ConfigError(f"adv_eps = {self.adv_eps}: expected -1 (the method's default) or a size > 0")
        if not self.adv_lr > 0 or self.adv_start_epoch < 0:
            raise ConfigError(f"adv_lr = {self.adv_lr}, adv_start_epoch = {self.adv_start_epoch}: expected adv_lr > 0 "
                              "and a 1-based epoch (0 = the method's default)")
        if not 0.0 < self.pseudo_threshold <= 1.0 or not self.pseudo_max_share > 0 or not self.pseudo_weight > 0:
            raise ConfigError(f"pseudo_threshold = {self.pseudo_threshold}, pseudo_max_share = {self.pseudo_max_share}, "
                              f"pseudo_weight = {self.pseudo_weight}: expected 0 < threshold <= 1, a share > 0 and a "
                              "weight > 0")
        if self.rdrop < 0:
            raise ConfigError(f"rdrop = {self.rdrop}: expected 0 (off) or a positive weight, e.g. 1.0")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(f"layer_lr_decay = {self.layer_lr_decay}: expected 0 < x <= 1 (1 = no decay)")
        if self.average_epochs < 0:
            raise ConfigError(f"average_epochs = {self.average_epochs}: expected 0 (off) or a number of epochs")
        if not self.epoch_scores and not self.average_epochs:
            raise ConfigError("epoch_scores = false: the best epoch is chosen on the per-epoch scores; it needs "
                              "average_epochs > 0 (no epoch chosen)")
        if self.average_epochs and self.ema:
            raise ConfigError(f"average_epochs = {self.average_epochs} and ema = {self.ema}: choose one weight average "
                              "(--average-epochs 0 to use --ema)")
        if not (self.cluster in ("none", "local", "auto") or re.fullmatch(r"[\w.\-]+:\d+", self.cluster)):
            raise ConfigError(f"cluster = {self.cluster!r}: expected none, local, auto or HOST:PORT of a Ray cluster")
        if self.gpus_per_fold != -1.0 and not 0.0 <= self.gpus_per_fold:
            raise ConfigError(f"gpus_per_fold = {self.gpus_per_fold}: expected -1 (auto), 0 or a share of GPUs, e.g. 0.5")
        for name in ("cpus_per_fold", "max_parallel", "retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)}: expected 0 (auto / none) or a positive integer")
        unknown = [n for n in tracker_names(self.report_to) if n not in TRACKERS]
        if unknown:
            raise unknown_name("--report-to tracker", unknown[0], TRACKERS)
        if self.lr <= 0 or self.head_lr < 0:
            raise ConfigError(f"lr = {self.lr}, head_lr = {self.head_lr}: expected lr > 0 and head_lr >= 0")

    def step_cost(self) -> float:
        """Forward-backward passes per training row and epoch, against a plain step's 1: entity-swap augmentation
        and R-Drop double them, an adversarial pass adds one over the epochs it runs in, pseudo-labels add at most
        ``pseudo_max_share`` rows per real row (the planner's and the executor choice's cost model).

        >>> Config(epochs=4, adversarial="fgm", adv_start_epoch=3).step_cost()
        1.5
        """
        adv = max(0, self.epochs - self.adversarial_from() + 1) / self.epochs if self.adversarial != "none" else 0.0
        pseudo = 1 + self.pseudo_max_share if self.pseudo_from else 1
        return (2 if self.augment == "swap" else 1) * (2 if self.rdrop else 1) * (1 + adv) * pseudo

    def adversarial_from(self) -> int:
        """The first epoch (1-based) with adversarial passes: ``adv_start_epoch``, or the method's default (fgm 1,
        awp 2) when it is 0."""
        return self.adv_start_epoch or {"fgm": 1, "awp": 2}.get(self.adversarial, 1)

    def averaged_epochs(self) -> range:
        """The 1-based epochs whose end-of-epoch weights ``average_epochs`` averages: the last N, or all of them
        when there are fewer (empty when off)."""
        return range(max(1, self.epochs - self.average_epochs + 1), self.epochs + 1) if self.average_epochs else range(0)

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (type-checked like a config file)."""
        return dataclasses.replace(self, **{k: _coerce(k, v, "override") for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tracker_names(report_to: str) -> tuple[str, ...]:
    """``"mlflow, wandb"`` -> ``("mlflow", "wandb")`` (order kept, repeats and ``none`` dropped)."""
    names = (n.strip().lower() for n in report_to.split(","))
    return tuple(dict.fromkeys(n for n in names if n and n != "none"))


_FIELDS = {f.name: f for f in fields(Config)}
#: Keys of earlier versions: what replaced them. A run's own config.json may still hold them (ignored there).
RETIRED = {"repair_offsets": "offsets = \"repair\" (the default) or \"strict\""}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Type-check one value against the Config field (ints are accepted for floats, nothing else is)."""
    if key in RETIRED:
        raise ConfigError(f"{source}: key '{key}': retired, use {RETIRED[key]}")
    if key not in _FIELDS:
        raise unknown_name(f"config key (in {source})", key, _FIELDS)
    kind = type(Config.__dataclass_fields__[key].default)
    if kind is tuple:  # a list of strings (a config file's list, repeated flags); one string is a list of one
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{source}: key '{key}': found {value!r}, expected a list of strings")
        return tuple(items)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{source}: key '{key}': found {value!r} ({type(value).__name__}), expected {kind.__name__}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into checked key/values (unknown keys raise ConfigError).

    A config written by ``kfold run`` (``config.json`` with ``config`` and ``versions``) or by
    ``tuning best`` is accepted as is.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: invalid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: found a {type(raw).__name__}, expected a table of key = value")
    if "config" in raw and isinstance(raw["config"], dict):  # a run's config.json: settings of its version
        raw = {k: v for k, v in raw["config"].items() if k not in RETIRED}
    return {key: _coerce(key, value, str(path)) for key, value in raw.items()}


def config_from_run(raw: Mapping[str, Any]) -> Config:
    """The Config recorded in a run's config.json (keys retired since it was written are left out)."""
    return Config(**{k: v for k, v in raw["config"].items() if k not in RETIRED})


#: The folder of the shipped presets: one TOML config per name, each value commented with where it was measured.
PRESET_DIR = Path(__file__).with_name("presets")


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description (the file's first comment line, after the name)."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.toml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        out[path.stem] = first.lstrip("# ").removeprefix(f"{path.stem}:").strip()
    return out


def preset_path(name: str) -> Path:
    """The file of a shipped preset; ConfigError listing the names for an unknown one."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise unknown_name("preset", name, list_presets())
    return path


def make_config(file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                preset: str | None = None) -> Config:
    """Defaults, then the preset's keys, then the file's keys, then command-line overrides (None values are
    skipped); the preset and the file go through the same checks.

    Example
    -------
    >>> make_config(preset="large-gpu", overrides={"lr": 2e-5}).batch_size
    16
    """
    values: dict[str, Any] = {}
    if preset:
        values.update(load_config_file(preset_path(preset)))
    if file:
        values.update(load_config_file(file))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    return Config(**values)


def chosen_keys(file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                preset: str | None = None) -> set[str]:
    """The keys the user chose (in the preset, the config file or on the command line), as :func:`make_config`
    reads them: a default is not a choice."""
    keys = set(load_config_file(preset_path(preset))) if preset else set()
    keys |= set(load_config_file(file)) if file else set()
    return keys | {k for k, v in (overrides or {}).items() if v is not None}


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """Add one ``--flag`` per Config field (default None, so the config file's value stays unless given),
    with its one-line help, in the groups of ``kfold.core.helptext.GROUPS``; ``only``: just these fields."""
    from .helptext import GROUPS, HELP

    groups = {name: parser.add_argument_group(f"{name} settings (also config-file keys)") for name in GROUPS}
    for f in fields(Config):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        name, text = HELP[f.name]
        group = groups[name]
        flag = "--" + f.name.replace("_", "-")
        kind = type(f.default)
        shown = f"{text} (default: {f.default!r})".replace("%", "%%")  # argparse %-formats help texts
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=shown)
        elif kind is tuple:  # repeated: --pseudo-from a --pseudo-from b (names may hold commas)
            group.add_argument(flag, dest=f.name, action="append", default=None, metavar="NAME", help=shown)
        else:
            choices = [c for c in CHOICES.get(f.name, ()) if c] or None
            group.add_argument(flag, dest=f.name, type=kind, choices=choices, default=None,
                               metavar=None if choices else kind.__name__.upper(), help=shown)
        if f.name == "offsets":  # the flag of earlier versions, kept working
            group.add_argument("--repair-offsets", dest="offsets", action="store_const", const="repair",
                               help="old name of --offsets repair (now the default)")


def overrides_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The Config fields present on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(Config) if f.name not in skip and getattr(args, f.name, None) is not None}


def environment() -> dict[str, str]:
    """Library versions and the machine, recorded with every run."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "tokenizers", "numpy", "rekfold"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out
