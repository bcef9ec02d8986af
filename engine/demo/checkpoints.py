"""The two bundled demo checkpoints, by name: where each lives and what its traces are called.

Two checkpoints of one architecture answer the same questions differently, which is what the
dashboard's Compare and Dataset pages are for: "main" is the fully trained model, "weak" the
same recipe stopped mid-training (``engine.demo.train.RECIPES``). Their readable names differ,
so a trace's model column says which one answered. Torch-free: the CLI resolves names before
it loads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DemoCheckpoint:
    key: str  # the name commands take: --checkpoint main, --recipe weak
    folder: Path
    model_id: str  # written into config.json (_name_or_path): the model traces carry


DEMO_CHECKPOINTS: dict[str, DemoCheckpoint] = {
    "main": DemoCheckpoint("main", HERE / "checkpoint", "lvlm-interpret/shapes-demo"),
    "weak": DemoCheckpoint("weak", HERE / "checkpoint-weak", "lvlm-interpret/shapes-demo-weak"),
}
BOTH = "both"  # --checkpoint both: every bundled checkpoint, main first


def checkpoint_folders(choices: list[str]) -> list[Path]:
    """Folders for ``--checkpoint`` values: a bundled name, ``both``, or a checkpoint folder
    (write ``./main`` for a folder that shares a bundled name). Repeats are dropped."""
    folders: list[Path] = []
    for choice in choices:
        if choice == BOTH:
            folders += [c.folder for c in DEMO_CHECKPOINTS.values()]
        elif choice in DEMO_CHECKPOINTS:
            folders.append(DEMO_CHECKPOINTS[choice].folder)
        else:
            folders.append(Path(choice))
    return list(dict.fromkeys(folders))
