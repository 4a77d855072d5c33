"""A training run's folder: what it holds, when it may be reused, and how an interrupted run resumes.

A run folder holds ``run.json`` (run id, the exact config, which stages are finished), one
checkpoint directory per finished stage (written atomically, so its presence is the stage's
completion marker) and, while a stage is in progress, ``.resume/`` with the model, optimiser
and batch-sampler state of its last periodic checkpoint. ``.resume/`` is not a model directory:
it never loads as one.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

RUN_FILE = "run.json"
RESUME_DIR = ".resume"
TOKENIZER_DIR = ".tokenizer"


class RunFolderError(ValueError):
    """A training ``--out`` folder that cannot be used as asked (not empty, another run, damaged)."""


@dataclass
class RunFolder:
    """The state of one run's folder; ``settings`` must match exactly for a run to resume."""

    path: Path
    run_id: str
    settings: dict
    stages_done: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path, settings: dict, stages: tuple[str, ...], resume: bool, overwrite: bool):
        """Checks ``path`` before any work: a new run needs an empty (or absent) folder unless
        ``overwrite`` (which removes only this run's own files) or ``resume`` (which needs a
        ``run.json`` with the same settings)."""
        path = Path(path)
        if resume and overwrite:
            raise RunFolderError("give either --resume or --overwrite, not both")
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder")
        owned = [RUN_FILE, RESUME_DIR, TOKENIZER_DIR, *stages]
        present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if resume:
            if (path / RUN_FILE).is_file():
                return cls._resume(path, settings, stages)
            if present:
                raise RunFolderError(f"cannot resume in {path}: it has no {RUN_FILE}, so it holds no lensing run")
        elif present and not overwrite:
            what = "continue it with --resume" if (path / RUN_FILE).is_file() else "it is not a lensing run"
            raise RunFolderError(
                f"--out {path} is not empty (holds {', '.join(present[:6])}{' ...' if len(present) > 6 else ''}): "
                f"{what}; pass --overwrite to start over (removes only {', '.join(owned)}) or choose an empty folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        _check_writable(path)
        leftovers = [p.name for p in path.iterdir() if p.name.startswith((f"{RESUME_DIR}.", f".{RUN_FILE}"))]
        for name in [*owned, *leftovers]:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        run = cls(path, uuid.uuid4().hex, settings)
        run.write()
        return run

    @classmethod
    def _resume(cls, path: Path, settings: dict, stages: tuple[str, ...]) -> RunFolder:
        try:
            data = json.loads((path / RUN_FILE).read_text())
            run = cls(path, data["run_id"], data["settings"], list(data["stages_done"]))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise RunFolderError(f"{path / RUN_FILE} is damaged ({err}); start over with --overwrite") from err
        now, before = _flatten(settings), _flatten(run.settings)
        diff = sorted(k for k in {*now, *before} if now.get(k) != before.get(k))
        if diff:
            shown = "; ".join(f"{k}: run has {before.get(k)!r}, now {now.get(k)!r}" for k in diff[:3])
            raise RunFolderError(
                f"cannot resume the run in {path} with different settings ({shown}); "
                "rerun with the original settings, or start over with --overwrite"
            )
        _check_writable(path)
        # a stage directory is written atomically, so one that names this run is finished
        run.stages_done = [s for s in stages if run.stage_finished(s)]
        return run

    def stage_finished(self, stage: str) -> bool:
        meta_file = self.path / stage / "lensing.json"
        if not meta_file.is_file():
            return False
        try:
            owner = json.loads(meta_file.read_text()).get("run_id")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunFolderError(f"{meta_file} is damaged ({err}); start over with --overwrite") from err
        if owner != self.run_id:
            raise RunFolderError(
                f"{self.path / stage} belongs to another run ({owner}), not {self.run_id}; start over with --overwrite"
            )
        return True

    def mark_finished(self, stage: str) -> None:
        if stage not in self.stages_done:
            self.stages_done.append(stage)
        self.write()
        shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)

    def write(self, complete: bool = False) -> None:
        data = {"run_id": self.run_id, "settings": self.settings, "stages_done": self.stages_done, "complete": complete}
        tmp = self.path / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path / RUN_FILE)

    # ------------------------------------------------------------- within a stage
    def save_progress(self, stage: str, step: int, model: torch.nn.Module, optimizer, rng: random.Random, losses):
        """Everything needed to continue ``stage`` after ``step`` steps, replacing the last one atomically."""
        tmp = Path(tempfile.mkdtemp(prefix=f"{RESUME_DIR}.", dir=self.path))
        try:
            save_model(model, str(tmp / "model.safetensors"))  # tied weights are written once
            state = optimizer.state_dict()
            tensors = {
                f"{index}.{key}": value.contiguous()
                for index, slot in state["state"].items()
                for key, value in slot.items()
            }
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            version, internal, gauss = rng.getstate()
            (tmp / "state.json").write_text(
                json.dumps(
                    {
                        "run_id": self.run_id,
                        "stage": stage,
                        "step": step,
                        "losses": losses,
                        "param_groups": state["param_groups"],
                        "rng": [version, list(internal), gauss],
                    }
                )
            )
            target, old = self.path / RESUME_DIR, self.path / f"{RESUME_DIR}.old"
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load_progress(self, stage: str, model: torch.nn.Module, optimizer, rng: random.Random) -> tuple[int, list]:
        """Restores the last periodic checkpoint of ``stage`` into the given objects; returns
        (steps done, their losses), or (0, []) when there is none for this stage."""
        folder = self.path / RESUME_DIR
        if not (folder / "state.json").is_file():
            return 0, []
        try:
            state = json.loads((folder / "state.json").read_text())
            if state["run_id"] != self.run_id or state["stage"] != stage:
                return 0, []
            load_model(model, str(folder / "model.safetensors"))
            slots: dict[int, dict] = {}
            for name, value in load_file(str(folder / "optimizer.safetensors")).items():
                index, key = name.split(".", 1)
                slots.setdefault(int(index), {})[key] = value
            optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
            version, internal, gauss = state["rng"]
            rng.setstate((version, tuple(internal), gauss))
            return int(state["step"]), list(state["losses"])
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise RunFolderError(
                f"the periodic checkpoint {folder} is damaged ({err}); delete it to redo stage {stage} from its start"
            ) from err


def _flatten(settings: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, with tuples as lists (as JSON stores them)."""
    flat = {}
    for key, value in json.loads(json.dumps(settings)).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_writable(path: Path) -> None:
    try:
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-check.", delete=True)
        probe.close()
    except OSError as err:
        raise RunFolderError(f"--out {path} is not writable: {err.strerror}") from err
