"""Publishing a trained model so that a running server can never read a half-written file.

MONAI Label's ``PublishStatsAndModel`` copies the best checkpoint over the served model in place;
an inference that reloads at that moment reads a torn file. This one replaces files atomically and
keeps the per-epoch validation history in the stats, drawn as a PNG beside them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List

from monailabel.tasks.train.handler import PublishStatsAndModel, prepare_stats

from ..runtime.atomic import atomic_path, write_json
from .curves import save_training_curve

logger = logging.getLogger(__name__)


class AtomicPublishStatsAndModel(PublishStatsAndModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history: List[Dict[str, Any]] = []

    def iteration_completed(self) -> Dict[str, Any]:
        stats = prepare_stats(self.start_ts, self.trainer, self.evaluator)
        epoch: Dict[str, Any] = {"epoch": self.trainer.state.epoch}
        epoch.update({k: v for k, v in stats.get("train", {}).get("metrics", {}).items()})
        epoch.update({k: v for k, v in stats.get("eval", {}).get("metrics", {}).items()})
        loss = self.trainer.state.output
        if isinstance(loss, list) and loss and isinstance(loss[0], dict) and "loss" in loss[0]:
            epoch["loss"] = float(sum(float(o["loss"]) for o in loss) / len(loss))
        self.history.append(epoch)
        stats["history"] = self.history
        write_json(stats, Path(self.output_dir) / f"stats_{self.run_id}.json")
        save_training_curve(self.history, Path(self.output_dir) / f"training_curve_{self.run_id}.png", f"training run {self.run_id}")
        if self._stats_path:
            write_json(stats, Path(self._stats_path))

        best = Path(self.output_dir) / self._key_metric_filename
        if self._publish_path and best.exists():
            target = Path(self._publish_path)
            if not target.exists() or best.stat().st_mtime > target.stat().st_mtime:
                with atomic_path(target) as tmp:
                    shutil.copyfile(best, tmp)
                logger.info(f"New model published: {best} => {target}")
        return stats
