"""The README's first snippet: the asyncio API with every argument spelled out.

One process per rank, here two on one machine (the README shows the same program):

    python examples/quickstart_async.py 0 2 tcp://127.0.0.1:29800 out/quickstart &
    python examples/quickstart_async.py 1 2 tcp://127.0.0.1:29800 out/quickstart

Each rank joins rank 0's coordinator endpoint, registers, passes a barrier, prints the
leader and the members, commits its part of checkpoint step 1000 together with the
other rank, and loads it back. On several hosts, the coordinator URL is rank 0's
address (``tcp://<rank 0's host>:29800``) and ``ip`` the address peers reach this
worker at.
"""

import asyncio
import sys

from dtruntime import CheckpointManager, TrainingOrchestrator


async def main(rank: int, world_size: int, coordinator_url: str, checkpoint_dir: str) -> None:
    # Under torchrun every argument can be omitted (RANK, WORLD_SIZE, MASTER_ADDR, ...).
    orch = TrainingOrchestrator(f"worker-{rank}", coordinator_url, world_size=world_size, rank=rank,
                                heartbeat_interval_ms=100, heartbeat_timeout_ms=1000)
    async with orch:
        await orch.register_worker(ip="127.0.0.1", port=0, gpu_count=8, memory_bytes=512 << 30)
        await orch.wait_barrier("start_epoch_5", timeout=60)
        print(orch.leader(), [m.worker_id for m in orch.members()])

        checkpoints = CheckpointManager(checkpoint_dir, keep_last_n=5, orchestrator=orch)  # or "s3://bucket/run-7"
        handle = await checkpoints.save_async(f"rank {rank}'s state".encode(), step=1000)  # returns once queued
        await handle                                    # every rank's part durable, manifest written
        data = await checkpoints.load()                 # this rank's part of the newest committed step
        print(f"rank {rank} loaded {data.decode()!r}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))
