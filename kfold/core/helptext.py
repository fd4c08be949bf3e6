"""One-line help for every run setting, grouped as ``kfold run --help`` shows them. Torch-free.

Every field of :class:`kfold.Config` has an entry (a test checks it), so no flag reads only "default: ''".
"""

from __future__ import annotations

#: The order of the groups in --help.
GROUPS = ("data", "folds", "model", "training", "speed", "cluster", "output", "trackers")

#: field -> (group, one-line help)
HELP: dict[str, tuple[str, str]] = {
    # data
    "data": ("data", "training file (competition TSV, KLUE JSON/JSONL, SemEval, CSV); empty = generated demo data"),
    "test": ("data", "test file predicted by every fold model (labels optional, never used for training or selection)"),
    "labels": ("data", "label file (label_type.pkl, relation_list.json, label.txt); default: found next to the data"),
    "format": ("data", "input format; auto decides from the extension and the first line"),
    "columns": ("data", "generic CSV only: field=column pairs, e.g. id=guid,sentence=text,end=exclusive"),
    "offsets": ("data", "entity offsets that miss their text: repair = move to the nearest occurrence (listed), "
                        "strict = refuse"),
    "repair_window": ("data", "--offsets repair moves an entity at most this many characters"),
    "no_relation": ("data", "the no-relation label, left out of micro-F1 (default: detected, e.g. no_relation, Other)"),
    "too_far": ("data", "entities further apart than --max-len: two windows joined by the separator, or an error"),
    "overlap": ("data", "subject and object spans that overlap: markers = mark both at their positions (listed), "
                        "error = refuse"),
    "bad_rows": ("data", "training rows with problems that cannot be repaired: error = refuse the file, skip = train "
                         "without them (listed; test rows are never skipped)"),
    # folds
    "folds": ("folds", "number of folds k (every row is predicted once, by the model that did not train on it)"),
    "fold_seed": ("folds", "seed of the fold map (separate from the training seed: all runs share one fold map)"),
    "group": ("folds", "duplicates = identical sentences stay in one fold"),
    # model
    "variant": ("model", "relation head (see `kfold variants`); --variants runs several"),
    "backbone": ("model", "Hugging Face model id or local folder; minilm = the packaged all-MiniLM-L6-v2 (English), "
                          "me5-small = the packaged multilingual-e5-small (Korean; the multilingual extra)"),
    "marker": ("model", "how entities are marked in the text, e.g. @ s @ / # o # (entity_marker_punct)"),
    "max_len": ("model", "tokens per row; longer rows are cropped to a window that keeps both entities"),
    "activation": ("model", "activation of the head's projection layers (empty = the variant's, tanh)"),
    "pool": ("model", "entity vector: mean of its tokens or its start marker (empty = the variant's)"),
    "cls_vector": ("model", "sentence vector: auto = trained pooler if any, else first token; first; mean of tokens"),
    "dropout": ("model", "dropout in the relation head"),
    "backbone_dropout": ("model", "encoder dropout on hidden states (-1 = the checkpoint's value)"),
    "attention_dropout": ("model", "encoder dropout on attention probabilities (-1 = the checkpoint's value)"),
    # training
    "epochs": ("training", "passes over each fold's training part"),
    "batch_size": ("training", "rows per optimizer step (micro-batches and accumulation keep this fixed)"),
    "grad_accum": ("training", "split each batch into this many micro-batches (less memory, same update)"),
    "lr": ("training", "peak learning rate of the encoder (linear warmup, then linear decay)"),
    "head_lr": ("training", "learning rate of the new head (0 = --lr)"),
    "layer_lr_decay": ("training", "each encoder layer trains at this x the lr of the layer above (1 = no decay)"),
    "weight_decay": ("training", "AdamW weight decay (not on LayerNorm weights and biases)"),
    "warmup_ratio": ("training", "share of the optimizer steps spent warming the learning rate up"),
    "max_grad_norm": ("training", "gradient clipping norm"),
    "ema": ("training", "evaluate, select and save a moving average of the weights with this decay (0 = off)"),
    "average_epochs": ("training", "average the weights of the last N epochs instead of choosing an epoch (0 = off)"),
    "epoch_scores": ("speed", "score the validation rows after every epoch (training curves); off saves time with "
                              "--average-epochs"),
    "loss": ("training", "cross-entropy or focal loss"),
    "label_smoothing": ("training", "label smoothing of the cross-entropy (source competition: 0.05)"),
    "focal_gamma": ("training", "focusing parameter of --loss focal"),
    "rdrop": ("training", "R-Drop weight: each row twice, KL between the two predictions (0 = off; 2x cost)"),
    "adversarial": ("training", "adversarial training, one perturbation per optimizer step: fgm = word embeddings "
                                "moved along their gradient, awp = weights moved along theirs; then the batch again, "
                                "the weights restored (an extra forward and backward pass per step: the epoch log "
                                "line states its measured share)"),
    "adv_eps": ("training", "perturbation size (-1 = the method's default): fgm the embeddings' L2 step (1.0), awp "
                            "each weight's largest move as a share of its size (0.01)"),
    "adv_lr": ("training", "awp only: the weights' step along their gradient, as a share of each tensor's norm"),
    "adv_start_epoch": ("training", "first epoch (1-based) with adversarial passes (0 = the method's default: fgm 1, "
                                    "awp 2)"),
    "class_weights": ("training", "balanced = weight the loss by inverse label frequency (pseudo rows count by their "
                                  "targets times their loss weight)"),
    "pseudo_from": ("training", "pseudo label teacher: a run name of this workdir or a blend file (repeat the flag "
                                "for several: their mean). Test rows it labels confidently join the training part of "
                                "every fold (and of the refit with --refit), fold k's from the teachers' models that "
                                "never saw fold k; "
                                "needs --test, and teachers trained with the same fold map and test file (checked by "
                                "test ids and the test file's recorded hash)"),
    "pseudo_threshold": ("training", "a test row is pseudo labelled when the teachers' top probability is at least this"),
    "pseudo_max_share": ("training", "at most this many pseudo rows per real training row of the part (the most "
                                     "confident first, each label keeping its share)"),
    "pseudo_weight": ("training", "the loss weight of a pseudo labelled row (a real row's is 1)"),
    "pseudo_targets": ("training", "soft = train on the teachers' probabilities, hard = on their top label"),
    "pseudo_folds": ("training", "honest = fold k's rows come from teachers that never saw fold k's validation rows; "
                                 "naive = every fold takes the full data predictions (leaks validation labels into "
                                 "the OOF score; for measuring that leak)"),
    "augment": ("training", "swap = also train on rows with subject and object exchanged (directed labels only)"),
    "tta": ("training", "swap = predict both entity orders and average (directed labels only)"),
    "metric": ("training", "metric that chooses the epoch and sorts reports"),
    "seed": ("training", "training seed (--seeds runs several); the fold map has its own --fold-seed"),
    # speed and memory
    "precision": ("speed", "autocast: auto = bf16 (or fp16) on CUDA, bf16 on CPUs that compute it in hardware, else fp32"),
    "grad_checkpointing": ("speed", "recompute activations in the backward pass (less memory, ~30% slower)"),
    "compile": ("speed", "torch.compile the model"),
    "attn_implementation": ("speed", "attention kernel: auto = SDPA, except eager for bf16 on the CPU (faster there)"),
    "length_grouping": ("speed", "batch rows of similar length together (less padding)"),
    "eval_batch_size": ("speed", "rows per prediction batch (halved on out-of-memory)"),
    "auto_micro_batch": ("speed", "find the largest micro-batch that fits in memory and accumulate to --batch-size"),
    "device": ("speed", "auto = CUDA, then MPS, then CPU"),
    "threads": ("speed", "CPU threads for torch in this process (0 = the cores this process may use, affinity and "
                         "container quota counted); a CPU part on Ray uses its --cpus-per-fold share instead"),
    # cluster: where parts train (runtime settings: they never change a run's numbers, name or identity)
    "cluster": ("cluster", "where folds train: none = one at a time in this process on every core, local = side by "
                           "side on a Ray runtime of its own on this machine, HOST:PORT = exactly that Ray cluster, "
                           "auto = RAY_ADDRESS if set, else local with several GPUs, else on a CPU machine none unless "
                           "the probe measures local at least 1.15x faster on this data"),
    "gpus_per_fold": ("cluster", "GPUs each fold uses on a cluster (-1 = 1 where there are GPUs, else 0; 0.5 packs "
                                 "two folds on one GPU)"),
    "cpus_per_fold": ("cluster", "CPU cores (torch threads) each fold uses on Ray (0 = a GPU node's cores shared by "
                                 "its GPU folds; without GPUs the largest node's cores (this machine's usable ones "
                                 "with --cluster local) shared by the folds side by side, and all of them for a run's "
                                 "last part)"),
    "max_parallel": ("cluster", "at most this many folds side by side (0 = as many as the resources allow)"),
    "retries": ("cluster", "times a fold is retried when its worker or node dies (an error it raises is not retried)"),
    # output
    "save_models": ("output", "keep each fold's model (for `kfold predict` on new test files)"),
    "refit": ("output", "after the folds, train one more model on all training rows to predict the test file"),
    # trackers (runtime settings: never part of a run's name or identity)
    "report_to": ("trackers", "send each run (config, per-epoch loss and validation scores per fold, OOF scores, "
                              "summary.json) to these trackers: comma-separated mlflow, tensorboard, wandb (each the "
                              "extra of that name); a failing tracker warns once, training goes on"),
    "mlflow_uri": ("trackers", "MLflow tracking URI (empty = MLFLOW_TRACKING_URI, else MLflow's local default in the "
                               "working folder: mlflow.db with MLflow 3); the experiment is named after the workdir"),
    "wandb_project": ("trackers", "W&B project; runs are grouped by workdir (WANDB_MODE=offline works without a "
                                  "network)"),
}
