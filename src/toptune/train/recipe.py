"""Compose the pieces of a run: resolve the base checkpoint, load tokenizer and classifier, add adapters,
train in the configured prefix mode, predict. Kedro nodes and the benchmark call these."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from toptune.cache import fit_cached, resolve_prefix_mode
from toptune.config import (
    DEFAULT_MODEL_PATH,
    LoraSettings,
    ModelConfig,
    PrefixMode,
    RunConfig,
    TrainingConfig,
)
from toptune.data.tokens import Encoded
from toptune.model import families
from toptune.model.load import decoder_layers, load_classifier
from toptune.model.lora import add_adapters, param_counts
from toptune.model.precision import resolve_dtype, trainable_in_fp32
from toptune.model.tiny import ensure_tiny_qwen
from toptune.model.tokenizer import load_tokenizer
from toptune.prefix import selfcheck
from toptune.task import SINGLE, Task
from toptune.train import distributed
from toptune.train.batches import eval_split, live_batches, live_logits
from toptune.train.checkpoint.fingerprint import fingerprint
from toptune.train.checkpoint.resume import CHECKPOINT_DIR, Checkpoints
from toptune.train.device import autocast, resolve_device
from toptune.train.history import EvalResult
from toptune.train.loop import TrainResult, train
from toptune.train.objective import Objective, make_task, stored_labels

log = logging.getLogger(__name__)


def resolve_base_checkpoint(name_or_path: str, project_root: str | Path = ".") -> str:
    """The base checkpoint to load: the embedded default is written on first use; anything else is passed
    through (hub id or local directory) for ``from_pretrained`` to resolve."""
    if Path(name_or_path) == Path(DEFAULT_MODEL_PATH):
        # Under torchrun: rank 0 writes it, the others find it written (or write their machine's copy).
        return str(distributed.in_turn(lambda: ensure_tiny_qwen(Path(project_root) / DEFAULT_MODEL_PATH)))
    return name_or_path


@dataclass
class Classifier:
    """A Qwen classifier with LoRA on its trainable blocks, ready to train or predict."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    trainable_blocks: list[int]
    """Trainable block indices (``model.trainable_layers`` resolved against the checkpoint)."""
    device: torch.device
    task: Task = field(default_factory=Task)
    """What the head predicts; the train node fills in class weights and target scaling, calibration the
    temperature and thresholds."""

    @property
    def first_trainable_block(self) -> int:
        """Lowest trainable block: blocks below it are the frozen prefix."""
        return min(self.trainable_blocks)

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def pad_token_id(self) -> int:
        return self.model.config.pad_token_id


def build_classifier(
    model_cfg: ModelConfig,
    lora: LoraSettings,
    id2label: dict[int, str],
    seed: int,
    device: str = "auto",
    tokenizer: PreTrainedTokenizerBase | None = None,
    problem_type: str = SINGLE,
) -> Classifier:
    """Load tokenizer + checkpoint as a classifier of ``problem_type`` (its ``config.problem_type``) and put
    LoRA on the configured blocks (under ``torchrun``, after joining the job's process group: the model goes
    to this process's device)."""
    distributed.init()
    path = resolve_base_checkpoint(model_cfg.name_or_path)
    tok = tokenizer or load_tokenizer(path)
    dev = resolve_device(device)
    dtype = resolve_dtype(model_cfg.dtype, dev)
    model = load_classifier(path, id2label, tok.pad_token_id, seed=seed, dtype=dtype, problem_type=problem_type)
    trainable_blocks = model_cfg.trainable_blocks(len(decoder_layers(model)))
    peft_model = trainable_in_fp32(add_adapters(model, lora, trainable_blocks)).to(dev)
    return Classifier(peft_model, tok, trainable_blocks, dev, Task(problem_type, dict(id2label)))


def task_classifier(cfg: RunConfig, data: dict[str, Encoded], id2label: dict[int, str]) -> Classifier:
    """The classifier of ``cfg`` (seeded by ``training.seed``) with its task made from the training split's
    stored labels (class weights, target scaling): what a training run and a sweep's trial train."""
    train_labels = stored_labels(data["train"], cfg.data.problem_type)
    task = make_task(cfg.data, cfg.training, id2label, train_labels)
    clf = build_classifier(
        cfg.model, cfg.lora, id2label, cfg.training.seed, cfg.training.device, problem_type=task.problem_type
    )
    clf.task = task
    return clf


def check_forward_split(clf: Classifier, enc: Encoded, batch_size: int) -> dict:
    """Stock forward vs forward split on the first ``batch_size`` examples of ``enc`` (the run's first batch); the
    measured difference, or :class:`toptune.prefix.selfcheck.ForwardSplitMismatch` naming the model type."""
    batches = live_batches(enc, batch_size, clf.pad_token_id, False, 0, clf.device)
    b = next(batches.load(batches.order(0)[:1]))
    check = selfcheck.check_forward_split(
        clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, autocast(clf.device)
    )
    if not families.is_tested(check.model_type):
        log.warning(
            "model type %r is untested; its forward split check passed (max |Δlogit| %.2e on %d examples)",
            check.model_type,
            check.max_abs_logit_diff,
            check.rows,
        )
    return check.as_dict()


def training_setup(
    cfg: RunConfig,
    clf: Classifier,
    data: dict[str, Encoded],
    decided_mode: PrefixMode | None = None,
    run_id: str | None = None,
    directory: str | Path = CHECKPOINT_DIR,
) -> tuple[TrainingConfig, Checkpoints]:
    """The training parameters with ``prefix_mode`` decided, and the run's checkpoints (fingerprinted
    with the decided mode, ``run_id`` beside them). ``auto`` takes the mode of the checkpoint the run
    continues (another mode would take other steps), else ``decided_mode`` (the cache node's choice),
    else it is decided here."""
    training, world = cfg.training, distributed.world()
    checkpoints = Checkpoints(
        Path(directory),
        fingerprint(cfg, world, clf.device.type, data),
        training.resume,
        training.checkpoint_every,
        run_id,
    )
    if training.prefix_mode == "auto":
        chosen = checkpoints.choose()  # under "auto" a checkpoint of either decided mode matches
        mode = chosen["fingerprint"]["params"]["training.prefix_mode"] if chosen else decided_mode or "auto"
        if chosen and decided_mode not in (None, mode):
            log.info(
                "training.prefix_mode auto: %s, as checkpoint %s was trained (measured now: %s)",
                mode,
                chosen["path"],
                decided_mode,
            )
        training = dataclasses.replace(training, prefix_mode=mode)
        if mode == "auto":
            training, _ = resolve_prefix_mode(clf, data, training)
        checkpoints.fingerprint = fingerprint(dataclasses.replace(cfg, training=training), world, clf.device.type, data)
    return training, checkpoints


def fit(
    clf: Classifier, data: dict[str, Encoded], cfg: TrainingConfig, checkpoints: Checkpoints | None = None
) -> TrainResult:
    """Train on ``data['train']``, validating on ``data['val']`` each epoch, in ``cfg.prefix_mode`` (``auto``
    resolved here unless the caller already did); with ``checkpoints``, checkpointing and resuming as they
    say. The model ends with the best epoch's weights."""
    if cfg.prefix_mode == "auto":
        cfg, _ = resolve_prefix_mode(clf, data, cfg)
    objective = Objective(clf.task, cfg.regression_loss)
    if cfg.prefix_mode == "cache":
        return fit_cached(clf, data, cfg, checkpoints=checkpoints, objective=objective)
    logits_fn = live_logits(clf.model, clf.first_trainable_block, cfg.prefix_mode)
    train_b = live_batches(data["train"], cfg.batch_size, clf.pad_token_id, True, cfg.seed, clf.device)
    val_b = (
        live_batches(data["val"], cfg.eval_batch_size, clf.pad_token_id, False, 0, clf.device)
        if "val" in data
        else None
    )
    return train(clf.model, train_b, logits_fn, cfg, clf.device, val_b, checkpoints, objective)


def predict(clf: Classifier, enc: Encoded, batch_size: int) -> EvalResult:
    """Logits for every example of ``enc`` (no_grad forward; the prefix never needs a graph here); under
    ``torchrun`` the processes split the batches and every one gets all the logits."""
    batches = live_batches(enc, batch_size, clf.pad_token_id, False, 0, clf.device)
    return eval_split(clf.model, batches, live_logits(clf.model, clf.first_trainable_block, "no_grad"), clf.device)


def describe(clf: Classifier) -> dict[str, int | str]:
    """Flat facts about the model for logging: block split and parameter counts."""
    return {
        "num_layers": clf.num_layers,
        "first_trainable_block": clf.first_trainable_block,
        "trainable_layers": ",".join(map(str, clf.trainable_blocks)),
        **param_counts(clf.model),
    }
