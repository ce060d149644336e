"""Fine-tune the served model on several processes (PyTorch DDP), launched with torchrun.

One machine, two GPUs (or, on CPU, two processes with the gloo backend)::

    .venv/bin/torchrun --standalone --nproc_per_node 2 scripts/train_distributed.py --studies data/studies

Two machines, four GPUs each (run on both; the workspace on a shared file system)::

    .venv/bin/torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint host1:29400 \\
        scripts/train_distributed.py --studies https://pacs/dicom-web --conf workspace /shared/brats_label

It reads the same studies, workspace and ``--conf`` as the server, trains from the served model on the
labelled studies (split between the ranks; the held-out set is validated with Dice all-reduced over them),
and makes a model version exactly as a training inside the server does. Like the server's training worker,
it never serves anything itself: a version that is not worse is marked for promotion, and the server serves
it (at once when it runs, otherwise when it starts). ``--request`` takes a train request's JSON
(``max_epochs``, ``seed``, ...). Each rank logs a digest of its final weights: DDP keeps them identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from datetime import datetime
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent / "apps" / "brats_label"
sys.path.insert(0, str(APP_DIR))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", required=True, help="the server's studies: a folder, or a DICOMweb root")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="as the server's --conf")
    parser.add_argument("--request", default="{}", help='train request JSON, e.g. {"max_epochs": 10, "seed": 1}')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s] [rank {os.environ.get('RANK', '0')}] [%(levelname)s] (%(name)s) - %(message)s")
    if "RANK" not in os.environ:
        parser.error("start it with torchrun (see the module docstring), which sets RANK, WORLD_SIZE and the rendezvous")

    from lib.runtime.processes import declare_worker_process

    declare_worker_process()  # before the app exists: it must not take the server's writes
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    from main import BratsLabelApp

    app = BratsLabelApp(str(APP_DIR), args.studies, dict(args.conf))
    trainer = app.segmentation_trainer
    request = {**trainer.config(), **json.loads(args.request), "device": "cuda" if torch.cuda.is_available() else "cpu"}
    # one run id and one seed for every rank, from rank 0
    shared = [datetime.now().strftime("%Y%m%d_%H%M%S"), request.get("seed") if request.get("seed") is not None else secrets.randbelow(2**31)]
    dist.broadcast_object_list(shared, src=0)
    request["run_id"], request["seed"] = shared
    datalist = trainer.pre_process(request, app.datastore())
    if not datalist:
        dist.destroy_process_group()
        parser.exit(2, f"no labelled studies in the workspace {app.workspace}: the server imports a folder's labels, so start it once on these studies first\n")
    stats = trainer.train(rank, world, request, datalist)  # ends the process group
    if rank == 0:
        trainer.cleanup(request)
        print(
            json.dumps(
                {"best_metric": stats.get("best_metric"), "epochs": stats.get("epoch"), "serving": app.versions.serving(), "versions": [v["id"] for v in app.versions.list()]}
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
