"""Typed configuration of the training run (optimisation, precision, I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from opt_scale.utils.config_tools import require

PRECISIONS = ("fp32", "bf16", "fp16")


COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass
class TrainConfig:
    task: str = "pretrain"           # pretrain | vq (the image tokenizer MVM/DIR need) | caption | asr | retrieval
                                     # | vqa | classify
    init_from: str = ""              # fine-tuning: start from these weights (an opt-export, checkpoint or run dir)
    steps: int = 300                 # optimizer steps
    micro_batch_size: int = 8        # samples per rank per forward
    grad_accum: int = 1              # micro-batches per optimizer step
    lr: float = 1e-3             # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1        # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 30       # linear warm-up steps before the cosine decay
    weight_decay: float = 0.01   # AdamW decoupled weight decay
    beta1: float = 0.9           # AdamW beta1
    beta2: float = 0.98          # AdamW beta2
    eps: float = 1e-8            # AdamW epsilon
    grad_clip: float = 1.0           # max global grad norm (0: off)
    precision: str = "auto"          # fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 on CPU)
    ds_config: str = "auto"          # name in ds_configs/ or a path; auto: zero3_gpu on CUDA, zero3_cpu otherwise
    zero_init: bool = True           # build parameters partitioned (deepspeed.zero.Init) under ZeRO-3
    # torch.compile each transformer block (towers, cross-modal encoder,
    # decoders), as torchtitan does: the blocks are where the FLOPs are. Each
    # block is a ZeRO-3 leaf, so DeepSpeed's hooks stay eager around one graph
    # per block (model/layers.compile_blocks); shapes are dynamic, as batches
    # differ in length. The first steps pay the compilation.
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend (inductor; aot_eager or eager to debug)
    seed: int = 0                    # model init and dropout
    out_dir: str = "runs/opt"        # checkpoints/, tensorboard/, config.json, tokenizer copy
    resume: str = ""                 # "" (fresh), "auto" (newest complete checkpoint in out_dir), or a path
    overwrite: bool = False          # a fresh run into a used out_dir: delete its checkpoints/tensorboard/samples first
    checkpoint_every: int = 100      # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 3        # newest complete checkpoints kept (0: keep all)
    log_every: int = 10              # steps between TensorBoard/console logs
    report_to: tuple[str, ...] = ("tensorboard",)  # where rank 0 logs: tensorboard, wandb, mlflow (trackers.py)
    max_bad_steps: int = 5           # consecutive non-finite losses before aborting
    eval_every: int = 0              # steps between evaluations on data.eval_shards (0: never)
    eval_samples: int = 64           # held-out samples each evaluation uses
    peak_tflops: float = 0.0         # per-device peak for MFU; 0: from the device table (opt_scale/engine/peak.py)
    log_samples: bool = False        # write the sample keys of every step to <out_dir>/samples/rank<r>.jsonl
    dist_timeout_minutes: float = 30.0  # collectives' timeout (a hung rank is found after this long); no
                                        # rank works alone inside one: periodic eval is shared, and a
                                        # universal conversion is awaited on the file system
    inject_nan_at: tuple[int, ...] = ()  # testing aid: poison the loss with NaN at these steps

    def validate(self) -> None:
        from opt_scale.tasks.registry import TASKS
        require(self.task in TASKS, "train.task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        require(self.steps > 0, "train.steps", "must be positive")
        require(self.micro_batch_size > 0, "train.micro_batch_size", "must be positive")
        require(self.grad_accum > 0, "train.grad_accum", "must be positive")
        require(self.lr > 0, "train.lr", "must be positive")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        require(self.precision in PRECISIONS + ("auto",), "train.precision",
                f"must be one of {', '.join(PRECISIONS)} or auto, got {self.precision!r}")
        require(self.log_every > 0, "train.log_every", "must be positive")
        from .trackers import check_backends
        check_backends(self.report_to)
        require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        require(self.max_bad_steps > 0, "train.max_bad_steps", "must be positive")
        require(self.peak_tflops >= 0, "train.peak_tflops", "must be >= 0")
        require(self.eval_every >= 0 and self.eval_samples > 0, "train.eval_every",
                "eval_every must be >= 0 and eval_samples positive")
        require(not (self.overwrite and self.resume), "train.overwrite",
                f"deletes the checkpoints train.resume={self.resume!r} would continue from; set one of them")
        require(not self.compile or self.compile_backend in COMPILE_BACKENDS, "train.compile_backend",
                f"must be one of {', '.join(COMPILE_BACKENDS)}, got {self.compile_backend!r}")
        require(self.dist_timeout_minutes > 0, "train.dist_timeout_minutes", "must be positive")
