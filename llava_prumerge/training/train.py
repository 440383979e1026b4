"""The `llava-prumerge train` run: the paper's LoRA recipe on the Hugging Face Trainer, then merge and export.

See `llava_prumerge.training.cli.run_train` for the recipe and the options.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    SchedulerType,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..architectures import architecture_for
from ..common.cli_args import reduction_fields_from_args
from ..common.conversation import IMAGE_PLACEHOLDER
from ..common.loading import check_checkpoint_source, load_processor, prumerge_config
from ..common.outputs import check_output_path
from ..errors import DataError, MissingInputError, OutputExistsError, PruMergeError, UsageError
from ..modeling.runtime_compat import training_argument_names
from .data import (
    ConversationCollator,
    ConversationDataset,
    LengthBudget,
    describe_problems,
    prepare_conversations,
)

LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROJECTOR = "multi_modal_projector"
# Written into OUTPUT_DIR and every checkpoint: the base model and reducer settings --export-from needs.
TRAINING_BASE_FILE = "prumerge_training.json"
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(requested: str | None) -> str:
    """--bf16/--fp16/--fp32, defaulting to bf16 where the GPU has it; refuses what the device lacks."""
    cuda = torch.cuda.is_available()
    bf16_gpu = cuda and torch.cuda.is_bf16_supported()
    if requested is None:
        return "bf16" if bf16_gpu else "fp32"
    if requested == "fp16" and not cuda:
        raise UsageError(
            "--fp16 needs a CUDA GPU (fp16 mixed precision scales gradients on the GPU); use --bf16 or --fp32"
        )
    if requested == "bf16" and cuda and not bf16_gpu:
        raise UsageError("this GPU does not support bf16 (it needs an Ampere or newer GPU); use --fp16")
    return requested


def training_arguments(args: argparse.Namespace, precision: str) -> TrainingArguments:
    if not 0 <= args.warmup_ratio < 1:
        raise UsageError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    schedulers = [scheduler.value for scheduler in SchedulerType]
    if args.lr_scheduler not in schedulers:
        raise UsageError(
            f"--lr-scheduler {args.lr_scheduler!r} is not one of transformers' schedulers {schedulers}"
        )
    loggers = checked_integrations(args.report_to, args.deepspeed)
    names = training_argument_names()
    warmup, checkpointing = names["warmup_ratio"], names["gradient_checkpointing"]
    return TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.num_epochs,
        max_steps=args.max_steps or -1,  # the Trainer's "no limit": the epochs decide
        per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler,
        **{warmup: args.warmup_ratio},
        weight_decay=0.0,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPUs run DDP (gloo)
        **{
            checkpointing: args.gradient_checkpointing,
            f"{checkpointing}_kwargs": {"use_reentrant": False},  # the frozen embeddings need no grad
        },
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        report_to=loggers,
        seed=args.seed,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,  # the collator builds exactly the model's inputs
        label_names=["labels"],
        deepspeed=args.deepspeed,
    )


def checked_integrations(report_to: str, deepspeed: str | None) -> list[str]:
    """The --report-to loggers; refuses those the Trainer does not know or cannot import, and a --deepspeed
    config that is absent or without DeepSpeed installed: the Trainer would fail on them only after the
    model loads."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = [name.strip() for name in report_to.split(",")]
    if len(names) > 1 and {"all", "none"} & set(names):
        raise UsageError(f"--report-to {report_to}: 'all' and 'none' stand alone, not in a list")
    if unknown := [name for name in names if name not in {"all", "none", *INTEGRATION_TO_CALLBACK}]:
        raise UsageError(
            f"--report-to: unknown logger(s) {unknown}; use none, all, or a comma-separated subset of "
            f"{','.join(sorted(INTEGRATION_TO_CALLBACK))}"
        )
    available = set(get_available_reporting_integrations())
    if absent := [name for name in names if name not in {"all", "none", *available}]:
        raise UsageError(
            f"--report-to: {', '.join(absent)} not installed; install it or drop it from --report-to"
        )
    if deepspeed is not None and not Path(deepspeed).is_file():
        raise MissingInputError(f"--deepspeed {deepspeed} is not a file; pass a DeepSpeed JSON config")
    if deepspeed is not None and importlib.util.find_spec("deepspeed") is None:
        raise UsageError(f"--deepspeed {deepspeed}: DeepSpeed is not installed; pip install deepspeed")
    return names


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """group_by_length whose order depends only on (seed, epoch), so a resumed run sees the same batches.

    The stock sampler draws from the global RNG, whose state at an epoch's start differs after a resume.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer at each epoch start
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class PruMergeTrainer(Trainer):
    """Trainer with the projector at its own learning rate and length-grouped batches."""

    def __init__(self, *args, projector_lr: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

    def create_optimizer(self, model=None):
        """As LLaVA's mm_projector_lr: parameter groups by learning rate (projector or LoRA) and weight decay."""
        if self.optimizer is None:
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            groups: dict[tuple[float, float], list] = {}
            # The LoRA group first: the Trainer logs the first group's learning rate.
            named = sorted(model.named_parameters(), key=lambda item: PROJECTOR in item[0])
            for name, param in named:
                if param.requires_grad:
                    lr = self.projector_lr if PROJECTOR in name else self.args.learning_rate
                    weight_decay = self.args.weight_decay if name in decay else 0.0
                    groups.setdefault((lr, weight_decay), []).append(param)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(
                [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()],
                **optimizer_kwargs,
            )
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        """group_by_length with the lengths measured up front (the stock sampler would load every image)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=dataset.lengths,
            seed=self.args.seed,
        )


class RecordTrainingBase(TrainerCallback):
    """Writes TRAINING_BASE_FILE into each checkpoint, so that any checkpoint can be exported alone."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            (folder / TRAINING_BASE_FILE).write_text(json.dumps(self.record, indent=2) + "\n")


def add_lora(model: torch.nn.Module, args: argparse.Namespace) -> PeftModel:
    """LoRA on the language model's linear layers, the projector fully trainable, all else frozen."""
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        modules_to_save=[PROJECTOR],  # trained, and saved with the adapter
    )
    peft_model = get_peft_model(model, lora)
    for param in peft_model.parameters():
        if param.requires_grad:  # fp32 master weights under bf16/fp16 autocast
            param.data = param.data.float()
    return peft_model


def train(args: argparse.Namespace) -> dict:
    """Check the run's folders and data, then train, save and (unless --no-export) merge and export."""
    try:
        return _train(args)
    finally:
        # Under torchrun, a process exiting with gloo's group still open can abort ("terminate called
        # without an active exception") while the first process is still exporting.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace) -> dict:
    precision = resolve_precision(args.precision)
    output_dir, resume, export = _run_folders(args)
    training_args = training_arguments(args, precision)  # before loading: DeepSpeed ZeRO-3 loads sharded
    main_process = training_args.process_index == 0

    processor = load_processor(args.model)  # one line naming a missing library (torchvision), no traceback
    config = prumerge_config(args.model, **reduction_fields_from_args(args))
    budget = LengthBudget(args.max_length, config.image_token_id, config.image_seq_length)
    conversations, report_path = _checked_conversations(
        args, processor.tokenizer, config, budget, main_process
    )

    head = architecture_for(config.model_type).load("head_class")
    model = head.from_pretrained(args.model, config=config, dtype=PRECISION_DTYPES[precision])
    model.config.text_config.use_cache = False  # no KV cache while training (gradient checkpointing)
    peft_model = add_lora(model, args)
    record = {
        "model": str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model,
        "reduction": config.reduction_settings.to_dict(),
    }
    if main_process:
        world = training_args.world_size
        print(
            f"training: {config.token_reduction} reducer, {precision}, effective batch "
            f"{args.per_device_batch_size} x {args.gradient_accumulation_steps} x {world} process(es) = "
            f"{args.per_device_batch_size * args.gradient_accumulation_steps * world}"
        )
        peft_model.print_trainable_parameters()
    trainer = PruMergeTrainer(
        model=peft_model,
        args=training_args,
        train_dataset=ConversationDataset(
            conversations, processor.tokenizer, processor.image_processor, budget
        ),
        data_collator=ConversationCollator(pad_token_id=processor.tokenizer.pad_token_id or 0),
        processing_class=processor,
        callbacks=[RecordTrainingBase(record)],
        projector_lr=args.projector_lr,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # OUTPUT_DIR: the final adapter, projector and processor
    trainer.save_state()
    summary = {
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "output_dir": str(output_dir),
        "data_report": str(report_path),
        "export": None,
    }
    if not trainer.is_world_process_zero():
        return summary
    (output_dir / TRAINING_BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if export is not None:
        summary["export"] = str(export_checkpoint(output_dir, export))
    return summary


def _run_folders(args: argparse.Namespace) -> tuple[Path, bool | str | None, Path | None]:
    """(output folder, what to resume from, export folder), refusing what would clash, before any work."""
    required = {
        "--model": args.model,
        "--data": args.data,
        "--image-folder": args.image_folder,
        "--output-dir": args.output_dir,
    }
    missing = [flag for flag, value in required.items() if value is None]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} required to train (or --export-from CHECKPOINT to export one)"
        )
    check_model_source(args.model)
    check_output_path(args.output_dir, "--output-dir", folder=True)
    output_dir = Path(args.output_dir)
    resume = args.resume_from_checkpoint
    if resume == "latest":
        resume = str(_latest_complete_checkpoint(output_dir))
    elif resume is not None:
        if not Path(resume).is_dir():
            raise UsageError(f"--resume-from-checkpoint {resume}: no such folder")
        if problem := checkpoint_problem(Path(resume)):
            raise UsageError(
                f"--resume-from-checkpoint {resume}: {problem}; resume from an earlier checkpoint"
            )
    elif resume is None and output_dir.is_dir() and get_last_checkpoint(str(output_dir)) is not None:
        raise UsageError(
            f"{output_dir} already holds checkpoints of a run; pass --resume-from-checkpoint latest to "
            "continue it, or choose another --output-dir"
        )
    export = None if args.no_export else Path(args.export or output_dir / "merged")
    if export is not None and export.exists():
        raise OutputExistsError(
            f"the export folder {export} already exists; remove it, pass another --export, or --no-export"
        )
    check_output_path(export, "--export", folder=True)
    return output_dir, resume, export


def check_model_source(model: str) -> None:
    """A --model that is a file, a missing folder or an unreachable Hub id, named up front: the processor,
    loaded first, would end in a loader's traceback or a minute of download retries."""
    try:
        check_checkpoint_source(model)
    except PruMergeError as error:
        raise type(error)(f"--model {model}: {error}") from error


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it can).

    The Trainer writes `trainer_state.json` last, so a run stopped while saving leaves a folder
    without it; every other file a resume reads is checked too, and the first damaged one named: JSON
    that does not parse, a weight file cut short (with what its header expects), an optimizer,
    scheduler or RNG state (torch.save archives) cut short or with a damaged member.
    """
    from ..common.file_checks import first_unreadable, torch_file_problem

    state = checkpoint / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME} (the run stopped while saving it)"
    if problem := json_problem(checkpoint.rglob("*.json")):
        return problem
    for path in sorted(path for path in checkpoint.rglob("*") if path.suffix in (".pt", ".pth", ".bin")):
        if problem := torch_file_problem(path):
            return problem
    return first_unreadable(sorted(checkpoint.rglob("*.safetensors")))


def json_problem(paths) -> str | None:
    """The first of the JSON files `paths` that does not parse or is not an object (every JSON file a
    checkpoint holds is one), named; None when all read."""
    for path in sorted(paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return f"{path} is not valid JSON ({error})"
        if not isinstance(data, dict):
            return f"{path} holds a JSON {type(data).__name__}, not an object"
    return None


def export_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be exported (None when it can): a damaged JSON file, the adapter weights
    absent or cut short, or a training record whose fields have the wrong types."""
    from ..common.file_checks import first_unreadable

    if problem := json_problem(checkpoint.glob("*.json")):  # its checkpoint-N folders are not read
        return problem
    weights = checkpoint / "adapter_model.safetensors"
    if not weights.is_file() and not (checkpoint / "adapter_model.bin").is_file():
        return f"it has no {weights.name} (the run stopped while saving it?)"
    if problem := first_unreadable([weights] if weights.is_file() else []):
        return problem
    record_path = checkpoint / TRAINING_BASE_FILE
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    if not isinstance(record.get("model", ""), str) or not isinstance(record.get("reduction", {}), dict):
        return f"{record_path} needs 'model' a string and 'reduction' an object"
    return None


def _latest_complete_checkpoint(output_dir: Path) -> Path:
    """The newest checkpoint-N that can be resumed from; newer incomplete ones are named and skipped."""
    checkpoints = sorted(
        (
            path
            for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if path.is_dir() and path.name.split("-")[-1].isdigit()
        ),
        key=lambda path: int(path.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        print(f"Skipping {checkpoint}: {problem}")
    raise UsageError(
        f"--resume-from-checkpoint latest: no complete {PREFIX_CHECKPOINT_DIR}-N folder in {output_dir}"
        + (" (all are incomplete, see above)" if checkpoints else "")
    )


def _checked_conversations(args, tokenizer, config, budget: LengthBudget, main_process: bool):
    """The usable conversations and the report's path; bad samples stop the run unless --skip-bad-samples."""
    if tokenizer(IMAGE_PLACEHOLDER, add_special_tokens=False)["input_ids"] != [config.image_token_id]:
        raise UsageError(
            f"the tokenizer of {args.model} does not map {IMAGE_PLACEHOLDER} to the model's image token"
        )
    try:
        conversations, report = prepare_conversations(
            Path(args.data), Path(args.image_folder), tokenizer, budget
        )
    except OSError as error:
        raise DataError(f"cannot read the training data: {error}") from error
    report_path = Path(args.output_dir) / "data_report.json"
    if main_process:
        report.write(report_path)
        print(report.summary())
        if report.truncated:
            ids = ", ".join(repr(entry["id"]) for entry in report.truncated[:5])
            print(f"warning: {len(report.truncated)} sample(s) over --max-length lose their last text: {ids}")
    if report.bad and not args.skip_bad_samples:
        raise DataError(
            f"{len(report.bad)} bad sample(s) in {args.data}:\n{describe_problems(report)}\n"
            f"All are listed in {report_path}. Fix them, or pass --skip-bad-samples to train on the "
            f"{report.used} others."
        )
    if report.bad and main_process:
        print(
            f"warning: skipping {len(report.bad)} bad sample(s) (--skip-bad-samples):\n{describe_problems(report)}"
        )
    if not conversations:
        raise DataError(f"no usable sample in {args.data}")
    return conversations, report_path


def export_checkpoint(
    checkpoint: Path, out_dir: Path, model_name: str | None = None, **reduction_fields
) -> Path:
    """Merge a checkpoint's LoRA and projector into its base model and write the Hub folder; reducer
    fields given here override those the checkpoint was trained with."""
    if not (checkpoint / "adapter_config.json").is_file():
        raise UsageError(
            f"{checkpoint} is not a checkpoint of `llava-prumerge train` (no adapter_config.json); "
            "pass its OUTPUT_DIR or an OUTPUT_DIR/checkpoint-N"
        )
    if problem := export_problem(checkpoint):
        raise UsageError(f"cannot export {checkpoint}: {problem}; pass another checkpoint to --export-from")
    if out_dir.exists():
        raise OutputExistsError(
            f"the export folder {out_dir} already exists; remove it or pass another --export"
        )
    check_output_path(out_dir, "--export", folder=True)
    if model_name is not None:
        check_model_source(model_name)
    record_path = checkpoint / TRAINING_BASE_FILE
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    base = model_name or record.get("model")
    if base is None:
        raise UsageError(
            f"{checkpoint} does not name its base model ({TRAINING_BASE_FILE} is missing); pass --model BASE"
        )
    config = prumerge_config(base, **{**record.get("reduction", {}), **reduction_fields})
    model = (
        architecture_for(config.model_type)
        .load("head_class")
        .from_pretrained(base, config=config, dtype="auto")
    )
    merged = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    processor = load_processor(checkpoint)  # the Trainer saves it with each checkpoint

    from ..hub_upload.export import save_hub_folder  # imported only when exporting

    folder = save_hub_folder(merged, processor, out_dir)
    print(f"export: merged {checkpoint} into {base} ({config.token_reduction} reducer): {folder}")
    return folder
