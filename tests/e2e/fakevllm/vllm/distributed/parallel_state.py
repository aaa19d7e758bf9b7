"""vllm.distributed.parallel_state: the clean-up helper."""

CLEANUPS: list[int] = []


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    CLEANUPS.append(1)
