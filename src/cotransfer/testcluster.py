"""A one-node SLURM cluster on this machine, for the tests and for trying the profile (docs/cluster.md).

`start(dir)` finds or installs Debian's `slurm-wlm` and `munge` (root only), writes a `slurm.conf`
with two partitions (`cpu`, the default, and `gpu`) on one node that offers this machine's CPUs and
memory and four "GPUs" backed by device files (`/dev/null`, ...: SLURM only counts them; a
count-only gres.conf would drain the node), starts `munged` (unless one runs), `slurmctld` and
`slurmd` on free ports, and waits until the node is idle. Clients find the cluster through
`SLURM_CONF` (`TestCluster.env()`), so the machine's own /etc/slurm is never touched. `stop()`
kills, by pid, only what `start()` started.

    cotransfer test-cluster start DIR     # prints the export line for SLURM_CONF
    cotransfer test-cluster stop DIR
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged")
GPUS = 4
GPU_FILES = "/dev/null,/dev/zero,/dev/full,/dev/random"


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster (not root, no apt, install failed)."""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)


def ensure_installed() -> None:
    """Find the SLURM and munge binaries, or install the Debian packages (root only)."""
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurm-wlm and munge are not installed, and installing them needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("slurm-wlm and munge are not installed, and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = _run(["apt-get", "install", "-y", "-q", *PACKAGES], env=env)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        _run(["apt-get", "update", "-q"], env=env)
        proc = _run(["apt-get", "install", "-y", "-q", *PACKAGES], env=env)
    if proc.returncode != 0:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterUnavailable("no MemTotal in /proc/meminfo")


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class TestCluster:
    dir: Path
    node: str = ""
    cpus: int = 0
    mem_mb: int = 0
    ctld_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.mem_mb = max(1000, _mem_mb() - 2000)  # leave the submit host's own processes room
        self.ctld_port = _free_port()
        self.conf.write_text(f"""\
# written by cotransfer.testcluster: a one-node test cluster
ClusterName=cotransfer-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmctldParameters=enable_configless
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} Default=NO MaxTime=INFINITE State=UP
""")
        (d / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={GPU_FILES}\n")

    def _start_munge(self) -> None:
        if _run(["pgrep", "-x", "munged"]).returncode == 0:
            return  # the machine's own munged: not ours to stop
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        proc = _run(["runuser", "-u", "munge", "--", _sbin("munged")])
        if proc.returncode != 0:
            raise ClusterUnavailable(f"munged did not start: {proc.stderr.strip()}")
        time.sleep(0.5)
        pid = _run(["pgrep", "-n", "-x", "munged"]).stdout.strip()
        if pid:
            self.pids["munged"] = int(pid)

    def _start_daemon(self, name: str) -> None:
        # slurmd runs "configless": it fetches the config from slurmctld and keeps a copy under
        # /run/slurm/conf, where srun inside a job finds it (the SLURM executor's job step drops
        # SLURM_CONF from the environment of its nested srun).
        args = ["-f", str(self.conf)] if name == "slurmctld" else [
            "--conf-server", f"127.0.0.1:{self.ctld_port}"]
        proc = _run([_sbin(name), *args], env=self.env())
        if proc.returncode != 0:
            raise ClusterUnavailable(f"{name} did not start: {proc.stderr.strip()}\n"
                                     f"(log: {self.dir}/log/{name}.log)")
        pidfile = self.dir / f"{name}.pid"
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                self.pids[name] = int(pidfile.read_text().strip())
                return
            time.sleep(0.1)
        raise ClusterUnavailable(f"{name} wrote no pid file ({pidfile})")

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = _run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), timeout=30)
            state = out.stdout.strip()
            if out.returncode == 0 and state and all(s.rstrip("*") in ("idle", "mixed", "allocated")
                                                     for s in state.split()):
                return
            time.sleep(1)
        log = (self.dir / "log/slurmd.log")
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise ClusterUnavailable(f"the test node is not idle after {timeout:.0f} s (state {state!r}):\n{tail}")

    def save(self) -> None:
        (self.dir / "cluster.json").write_text(json.dumps({**asdict(self), "dir": str(self.dir)}, indent=1))

    @classmethod
    def load(cls, d: str | os.PathLike) -> "TestCluster":
        doc = json.loads((Path(d) / "cluster.json").read_text())
        return cls(**{**doc, "dir": Path(doc["dir"])})

    def stop(self) -> None:
        """Kill what start() started, by pid (slurmd first), and wait for them to go."""
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.get(name)
            if pid and _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not _pid_alive(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        run_conf = Path("/run/slurm/conf")  # slurmd's configless copy, if it points into ours
        if run_conf.is_symlink() and str(self.dir) in os.readlink(run_conf):
            run_conf.unlink()
        if (self.dir / "cluster.json").exists():
            self.save()


def start(d: str | os.PathLike) -> TestCluster:
    """Install if needed, configure and start the one-node cluster in `d`; see the module doc."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster runs its daemons as root; run as root")
    ensure_installed()
    if Path("/etc/slurm/slurm.conf").exists():
        raise ClusterUnavailable("this machine has a SLURM config (/etc/slurm/slurm.conf): a test cluster "
                                 "beside it would mix the two; run the SLURM tests on a machine without one")
    run_conf = Path("/run/slurm/conf")
    if run_conf.exists() or run_conf.is_symlink():
        raise ClusterUnavailable(f"a slurmd already runs configless on this machine ({run_conf} -> "
                                 f"{os.readlink(run_conf) if run_conf.is_symlink() else 'a directory'}): "
                                 "stop that test cluster first (`cotransfer test-cluster stop DIR`)")
    c = TestCluster(Path(d).resolve())
    c._write_config()
    try:
        c._start_munge()
        c._start_daemon("slurmctld")
        c._start_daemon("slurmd")
        c.save()
        c.wait_idle()
    except BaseException:
        c.stop()
        raise
    return c
