"""The run directory: a complete, crash-safe record of one training run, and its lifecycle.

    RUN/config.json                 every setting, versions, git commit, normalisation
    RUN/metrics.sqlite              metrics, weight histograms, checkpoints (source of truth)
    RUN/snapshots/epoch_0003.safetensors   weights before training (0) and after each epoch
    RUN/state/epoch_0003.pt         optimiser, scheduler and RNG state for resuming
    RUN/curves.png                  accuracy and cost over training

`train_run` / `resume_run` create and continue one; `load_run` reads one back; `Run` and
`RunRecorder` are the writer and the recorder that `mindscope.training.train` reports to.
"""

from mindscope.run.lifecycle import create_run, resume_run, run_config, save_curves, train_run
from mindscope.run.loaded import LoadedRun, build_model, data_from_config, load_run
from mindscope.run.store import CONFIG, DATABASE, SCHEMA, Run, RunRecorder, atomic_write_bytes, is_run, read_metrics

__all__ = [
    "CONFIG",
    "DATABASE",
    "SCHEMA",
    "LoadedRun",
    "Run",
    "RunRecorder",
    "atomic_write_bytes",
    "build_model",
    "create_run",
    "data_from_config",
    "is_run",
    "load_run",
    "read_metrics",
    "resume_run",
    "run_config",
    "save_curves",
    "train_run",
]
