"""Runs on disk: the run folder (layout, lock, summary, exit codes) and checkpoint folders (atomic
save, load with checks). Everything that reads or writes a run goes through here."""

from transformer_lab.runs.checkpoint import (LoadedModel, clean_stale_temporaries, load_model, load_train_state,
                                             resolve_checkpoint, save_checkpoint)
from transformer_lab.runs.folder import (BEST, LAST, RunFolder, RunFolderInUse, exit_code, exported_model,
                                         find_checkpoint, is_ours, run_folder_of)

__all__ = ["BEST", "LAST", "LoadedModel", "RunFolder", "RunFolderInUse", "clean_stale_temporaries", "exit_code",
           "exported_model", "find_checkpoint", "is_ours", "load_model", "load_train_state", "resolve_checkpoint", "run_folder_of",
           "save_checkpoint"]
