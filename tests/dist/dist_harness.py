"""What the expert-parallel tests share: `mpirun -np N megamoe ...` on this machine (as root too,
oversubscribed, one OpenMP thread per rank), and tiny models made once per test class."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
from harness import CONFIG_DIR, megamoe_binary  # noqa: E402

TIMEOUT = 120  # seconds one mpirun may take

MPI_ENV = {
    **os.environ,
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    # Containers often forbid the cross-memory attach Open MPI's shared memory transport tries first.
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    # Ranks waiting in a collective yield their core instead of spinning: here ranks outnumber cores.
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMP_NUM_THREADS": "1",
}


def mpirun_command(ranks, *args):
    return ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks), megamoe_binary(),
            *map(str, args)]


def mpmd_command(*rank_args):
    """One rank per argument list (`mpirun A : B`): ranks that get different inputs."""
    command = ["mpirun", "--oversubscribe", "--bind-to", "none"]
    for i, args in enumerate(rank_args):
        command += ([":"] if i else []) + ["-np", "1", megamoe_binary(), *map(str, args)]
    return command


def run(command, check=True, timeout=TIMEOUT):
    """(returncode, stdout, stderr, seconds); with `check`, a failure reports the command's stderr."""
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=MPI_ENV, timeout=timeout)
    seconds = time.monotonic() - start
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr.strip()}")
    return result.returncode, result.stdout, result.stderr, seconds


def config(name):
    return os.path.join(CONFIG_DIR, name + ".json")
