"""The job worker's sandbox: bubblewrap namespaces and a seccomp filter made by libseccomp.

A worker runs code derived from a peer's bytes (a sanitised graph, weights, inputs). The
sanitiser is the first wall; this is the second, for the day a bypass is found. Each worker
runs under ``bwrap`` (Debian package ``bubblewrap``) with:

* its own user namespace, uid/gid 65534 inside, every capability dropped (CapEff 0),
  ``no_new_privs``, and no further user namespaces (``--disable-userns``);
* its own mount namespace holding only read-only system paths (``/usr``, the libraries,
  the Python installation and the site-packages the worker imports), a fresh ``/proc``,
  a minimal ``/dev``, a small ``/tmp``, and the job's directories at ``/job/files``
  (read-only) and ``/job/out``. The node's data directory (``identity.key``, ``api.sock``,
  the ledger) is not there: where it lies under a visible path, an empty tmpfs covers it;
* its own pid, network (only a ``lo`` that is down), ipc, uts and cgroup namespaces;
* a seccomp filter (:func:`seccomp_program`) that answers EPERM to namespace, mount,
  tracing, BPF, keyring and io_uring calls and to sockets other than AF_UNIX;
* for GPU jobs, only the chosen ``/dev/nvidia<index>`` and the driver's control nodes.

Syscalls are named, never numbered: libseccomp resolves each name for this machine's
architecture and compiles the BPF program, which bwrap loads just before it execs the
worker. PyPI has no maintained bindings for libseccomp (its own Python bindings are not
published there, ``pyseccomp`` was last released in 2021, ``seccompy`` carries its own
syscall tables), so the few calls needed go through ctypes to ``libseccomp.so.2``, which
every Debian system has (apt depends on it).

:func:`detect` finds both, builds the filter and starts one trial sandbox; what it returns
says what is missing, in words an owner can act on. This module does no I/O at import and
never imports torch.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SANDBOX_UID = 65534  # "nobody" inside the user namespace
JOB_ROOT = "/job"
FILES_INSIDE = f"{JOB_ROOT}/files"
OUT_INSIDE = f"{JOB_ROOT}/out"
TMP_BYTES = 64 << 20  # /tmp inside is RAM outside RLIMIT_AS: keep it small
TRIAL_TIMEOUT_S = 30.0
INSTALL_HINT = "install the Debian package bubblewrap (apt-get install bubblewrap)"

# Read-only system paths every worker sees (those that exist on this machine). /etc is
# not bound whole: only the loader's cache and configuration.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
# A GPU worker also needs the driver's view of the hardware (read-only) and these nodes.
GPU_PATHS = ("/sys",)
GPU_CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                       "/dev/nvidia-caps")

# --- the seccomp filter -----------------------------------------------------------------
# Refused with EPERM. Namespaces and mounts (the sandbox's own walls), tracing and reading
# other processes' memory, BPF, the kernel keyrings, and io_uring (its operations, socket
# creation included, are not seen by seccomp).
DENIED_SYSCALLS = (
    "setns", "unshare", "mount", "umount", "umount2", "pivot_root", "chroot",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)
# clone() with any of these flags is refused; clone3() passes its flags in memory that a
# filter cannot read, so it answers ENOSYS and the C library falls back to clone().
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}
AF_UNIX = 1

# libseccomp's ABI (seccomp.h): actions are the kernel's SECCOMP_RET_* values.
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_FLTATR_ACT_BADARCH = 2  # enum scmp_filter_attr: ACT_DEFAULT is 1
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_CMP_NE = 1
_SCMP_CMP_MASKED_EQ = 7


class SandboxUnavailable(Exception):
    """A mechanism the sandbox needs is missing or refused on this machine."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SandboxUnavailable(f"libseccomp is not installed (apt-get install libseccomp2): "
                                 f"{exc}") from None
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    return lib


def seccomp_program() -> bytes:
    """The worker's seccomp filter as a BPF program for this machine (bwrap ``--seccomp``).

    Everything is allowed except :data:`DENIED_SYSCALLS`, ``socket``/``socketpair`` of a
    family other than AF_UNIX and ``clone`` with a namespace flag (EPERM), and ``clone3``
    (ENOSYS). A syscall from another ABI (i386, x32) kills the process: libseccomp's
    default for architectures the filter was not built for. Syscalls this kernel's
    libseccomp does not know are skipped: the kernel cannot have them either.
    Raises :class:`SandboxUnavailable` when libseccomp is missing or refuses a rule.
    """
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SandboxUnavailable("seccomp_init failed")
    try:
        if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, _SCMP_ACT_KILL_PROCESS) < 0:
            raise SandboxUnavailable("libseccomp refused to kill syscalls of other ABIs")

        def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # __NR_SCMP_ERROR: unknown to this libseccomp
                return
            array = (_ArgCmp * len(cmps))(*(_ArgCmp(*c) for c in cmps)) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if rc < 0:
                raise SandboxUnavailable(f"libseccomp refused the rule for {name}: "
                                         f"{os.strerror(-rc)}")

        eperm = _SCMP_ACT_ERRNO | errno.EPERM
        for name in DENIED_SYSCALLS:
            rule(eperm, name)
        for name in ("socket", "socketpair"):
            rule(eperm, name, (0, _SCMP_CMP_NE, AF_UNIX, 0))
        for flag in CLONE_NAMESPACE_FLAGS.values():  # one rule per flag: any one refuses
            rule(eperm, "clone", (0, _SCMP_CMP_MASKED_EQ, flag, flag))
        rule(_SCMP_ACT_ERRNO | errno.ENOSYS, "clone3")
        fd = os.memfd_create("poolai-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SandboxUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


# --- what a worker sees ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sandbox:
    """The sandbox this machine offers. ``problem`` is empty when it is available."""

    bwrap: str = ""
    seccomp: bytes = b""
    version: str = ""
    readable: tuple[str, ...] = ()  # system and Python paths a worker sees (read-only)
    problem: str = "not probed"

    @property
    def available(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        if not self.available:
            return f"unavailable: {self.problem}"
        return f"{self.version} with a seccomp filter ({len(self.seccomp) // 8} BPF instructions)"

    def to_json(self) -> dict[str, object]:
        return {"available": self.available, "mechanism": self.version, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class Layout:
    """One sandboxed process's file system and devices.

    ``readable``: host paths bound read-only at the same path. ``binds``: (host path, path
    inside, writable). ``hidden``: host paths covered by an empty tmpfs wherever they lie
    under a readable path (the node's data directory). ``devices``: device nodes bound in.
    """

    readable: tuple[str, ...]
    binds: tuple[tuple[str, str, bool], ...] = ()
    hidden: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    cwd: str = "/"


_PATHS_PROBE = """
import importlib.util, json, os, sys
paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(os.path.realpath(sys.executable))}
paths.update(p for p in sys.path if os.path.isabs(p))
for name in ("poolai.node", "poolai.mesh", "poolai.storage"):
    spec = importlib.util.find_spec(name)
    paths.update(spec.submodule_search_locations or () if spec else ())
print(json.dumps(sorted(p for p in paths if os.path.exists(p))))
"""


def python_paths(python: str) -> tuple[str, ...]:
    """What ``python -m poolai.node.jobs.worker`` reads: the interpreter's installation, its
    site-packages (with what ``.pth`` files add) and the poolai packages.

    Asked of ``python`` itself in isolated mode (``-I``: no PYTHONPATH, no user site, not
    the current directory), as a worker with its minimal environment would see them.
    Raises :class:`SandboxUnavailable` when it cannot say.
    """
    try:
        probe = subprocess.run([python, "-I", "-c", _PATHS_PROBE], capture_output=True,
                               text=True, timeout=TRIAL_TIMEOUT_S, check=False)
        paths = json.loads(probe.stdout) if probe.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise SandboxUnavailable(f"{python} cannot list its paths: {exc}") from None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SandboxUnavailable(f"{python} cannot list its paths: {probe.stderr[-300:]}")
    if "/" in paths:  # the whole file system would be visible
        raise SandboxUnavailable(f"{python} lists / among its import paths")
    return tuple(paths)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Absolute, normalised, without any path that lies under another one in the set."""
    kept: list[str] = []
    for p in sorted({os.path.normpath(os.path.abspath(p)) for p in paths}):
        if not any(_under(p, k) for k in kept):
            kept.append(p)
    return kept


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def gpu_devices(cuda_visible_devices: str) -> tuple[str, ...]:
    """Device nodes of the GPUs named by index, plus the driver's control nodes."""
    indices = [i.strip() for i in cuda_visible_devices.split(",") if i.strip().isdigit()]
    return tuple(f"/dev/nvidia{i}" for i in indices) + GPU_CONTROL_DEVICES


def job_layout(sandbox: Sandbox, python: str, files_dir: Path, out_dir: Path, *,
               hidden: Sequence[Path] = (), devices: Sequence[str] = ()) -> Layout:
    """A worker's layout: the sandbox's read-only paths (and ``python``, should it lie
    elsewhere), the job's files read-only at :data:`FILES_INSIDE`, its output directory
    writable at :data:`OUT_INSIDE`, ``hidden`` covered, ``devices`` bound in."""
    readable = sandbox.readable + (python,) + (GPU_PATHS if devices else ())
    return Layout(readable=readable,
                  binds=((str(files_dir), FILES_INSIDE, False), (str(out_dir), OUT_INSIDE, True)),
                  hidden=tuple(str(h) for h in hidden), devices=tuple(devices), cwd=OUT_INSIDE)


def bwrap_argv(sandbox: Sandbox, layout: Layout, argv: Sequence[str], seccomp_fd: int) -> list[str]:
    """The bwrap command line that runs ``argv`` in ``layout`` (seccomp read from the fd)."""
    args = [sandbox.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
            "--hostname", "worker"]
    # No --die-with-parent: it is PR_SET_PDEATHSIG, tied to the thread that started bwrap,
    # and trio starts processes from cached threads that exit after 10 s idle. The worker
    # ends with the node through its lifeline pipe instead (see poolai.node.jobs.runner).
    # The fresh mounts first: a path bound later (under /tmp, say) is not covered by them.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
             "--size", str(TMP_BYTES), "--tmpfs", "/dev/shm"]
    readable = _outermost(p for p in layout.readable if os.path.lexists(p))
    for path in readable:
        if os.path.islink(path) and os.path.dirname(path) == "/":
            # /lib -> usr/lib on a merged-/usr system: the same link, not a second mount.
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    for hidden in _outermost(layout.hidden):
        if any(_under(hidden, r) for r in readable):
            args += ["--tmpfs", hidden]
    for device in layout.devices:
        args += ["--dev-bind-try", device, device]
    for source, dest, writable in layout.binds:
        args += ["--bind" if writable else "--ro-bind", source, dest]
    args += ["--chdir", layout.cwd, "--seccomp", str(seccomp_fd), "--", *argv]
    return args


def seccomp_fd(program: bytes) -> int:
    """A file descriptor holding ``program``, positioned at its start, for bwrap to read.
    Not inherited unless passed explicitly (``pass_fds``); the caller closes it."""
    fd = os.memfd_create("poolai-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def detect(python: str = sys.executable, *, bwrap: str | None = None) -> Sandbox:
    """What this machine offers: finds ``bwrap`` on PATH (or takes ``bwrap``), builds the
    seccomp filter and runs ``python -c pass`` in a trial sandbox with a worker's layout.

    Never raises for a missing mechanism: the returned :class:`Sandbox` says what is
    missing (``problem``), so the node can say it at start and on its status page.
    """
    path = bwrap if bwrap is not None else shutil.which("bwrap")
    if not path or not os.access(path, os.X_OK):
        return Sandbox(problem=f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    try:
        program = seccomp_program()
    except SandboxUnavailable as exc:
        return Sandbox(bwrap=path, problem=str(exc))
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=TRIAL_TIMEOUT_S, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Sandbox(bwrap=path, problem=f"{path} --version failed: {exc}")
    try:
        readable = SYSTEM_PATHS + python_paths(python)
    except SandboxUnavailable as exc:
        return Sandbox(bwrap=path, problem=str(exc))
    sandbox = Sandbox(bwrap=path, seccomp=program, version=version or "bwrap",
                      readable=readable, problem="")
    layout = Layout(readable=readable)
    fd = seccomp_fd(program)
    try:
        trial = subprocess.run(bwrap_argv(sandbox, layout, [python, "-c", "pass"], fd),
                               capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S,
                               pass_fds=(fd,), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                               check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Sandbox(bwrap=path, problem=f"a trial sandbox could not start: {exc}")
    finally:
        os.close(fd)
    if trial.returncode != 0:
        detail = trial.stderr.strip().splitlines()[-1:] or [f"exit {trial.returncode}"]
        return Sandbox(bwrap=path, problem=f"a trial sandbox failed ({detail[0][:300]}); "
                                           f"bwrap needs user namespaces "
                                           f"(sysctl kernel.unprivileged_userns_clone=1 or root)")
    return sandbox
