"""What this machine has: GPUs through NVML, CPU cores, memory, free storage.

Two providers with one interface (:class:`InventoryProvider`):

- :class:`NvmlProvider` reads the hardware. No NVIDIA driver, or a driver
  that fails, makes a CPU-only inventory and one log line saying why; the
  node never stops over it. Whether torch would see CUDA is *derived*, not
  asked: the node process never imports torch, so the provider reads torch's
  build (``torch/version.py``, without importing it) and compares its CUDA
  version with the driver's.
- :class:`FileProvider` reads a fixed description from a JSON file (for tests
  and machines without a GPU) and re-reads it when the file changes; its
  inventories are marked ``simulated``.

``read()`` blocks (NVML calls, file reads): call it from a worker thread.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from poolai.node.config import ConfigError
from poolai.node.units import parse_size

log = logging.getLogger(__name__)

MAX_INVENTORY_FILE = 64 * 1024
MAX_GPUS = 16


class InventoryError(ConfigError):
    """The simulated inventory file is missing or invalid (a configuration problem)."""


def format_size(n: int) -> str:
    """``85899345920`` → ``80.0GiB``: for people, not for parsing back exactly."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclasses.dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU. Sizes in bytes; fields the driver would not report are ``None``."""

    index: int
    name: str
    uuid: str
    memory_total: int
    memory_free: int
    compute_capability: tuple[int, int]
    utilization: int | None = None  # percent, over the driver's last sample period
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    # NVML's clock-event ("throttle") reasons active now, by name; local only, never advertised.
    throttle: tuple[str, ...] = ()


# NVML's clocks-event reason bits (nvmlClocksEventReason*), by the names the alerts use.
THROTTLE_BITS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
                 0x80: "hw_power_brake"}


def throttle_names(mask: int | None) -> tuple[str, ...]:
    """The reasons set in an NVML clocks-event mask (unknown bits ignored)."""
    if not isinstance(mask, int):
        return ()
    return tuple(name for bit, name in THROTTLE_BITS.items() if mask & bit)


@dataclasses.dataclass(frozen=True, slots=True)
class Inventory:
    """One reading of the machine. ``note`` says where it came from or why it has no GPU."""

    gpus: tuple[Gpu, ...]
    cpu_cores: int
    ram_total: int
    ram_free: int
    storage_free: int
    driver_version: str = ""
    cuda_version: str = ""
    torch_cuda: bool | None = None  # None: could not tell
    simulated: bool = False
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["gpus"] = [{**dataclasses.asdict(g), "compute_capability": "{}.{}".format(*g.compute_capability)}
                       for g in self.gpus]
        return out


class InventoryProvider(Protocol):
    """A source of :class:`Inventory` readings."""

    simulated: bool

    def read(self) -> Inventory:
        """A fresh reading; blocks briefly and never raises for hardware trouble."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- host facts


@dataclasses.dataclass(frozen=True, slots=True)
class HostFacts:
    cpu_cores: int
    ram_total: int
    ram_free: int
    storage_free: int


def read_host(storage_dir: Path, storage_quota: int | None = None) -> HostFacts:
    """CPU cores this process may use, RAM (total, available) and free space at ``storage_dir``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    total, free = _meminfo()
    try:
        storage = shutil.disk_usage(storage_dir).free
    except OSError:
        storage = 0
    if storage_quota is not None:
        storage = min(storage, storage_quota)
    return HostFacts(cores, total, free, storage)


def _meminfo() -> tuple[int, int]:
    try:
        text = Path("/proc/meminfo").read_text()
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()
                  if len(line.split()) >= 2 and line.split()[1].isdigit()}
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (OSError, ValueError, AttributeError):
        return 0, 0


_TORCH_CUDA = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"](\d+)\.(\d+)['\"]", re.MULTILINE)


def torch_cuda_build() -> tuple[int, int] | None | bool:
    """The CUDA version installed torch was built for, read without importing torch.

    Returns (major, minor); None for a CPU-only build; False when torch is
    not installed or its version file cannot be read.
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return False
    match = _TORCH_CUDA.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def derive_torch_cuda(
    gpus: int, driver_cuda: tuple[int, int] | None, build: tuple[int, int] | None | bool
) -> bool | None:
    """Whether torch in a worker would see CUDA: GPUs, a CUDA build, and a driver new enough.

    CUDA's minor-version compatibility lets a driver of major version M run
    any M.x build, so majors are compared. None when the driver's CUDA
    version is unknown.
    """
    if gpus == 0 or build is False or build is None:
        return False
    if driver_cuda is None:
        return None
    assert isinstance(build, tuple)
    return driver_cuda[0] >= build[0]


# --------------------------------------------------------------------------- NVML


class NvmlProvider:
    """Reads GPUs through NVML. ``nvml`` may be given (a fake in tests); by default pynvml."""

    simulated = False

    def __init__(self, storage_dir: Path, *, storage_quota: int | None = None,
                 nvml: ModuleType | None = None, retry_after: float = 60.0) -> None:
        self.storage_dir = storage_dir
        self.storage_quota = storage_quota
        self.retry_after = retry_after
        self._nvml = nvml
        self._ready = False
        self._failure = ""  # why the last reading had no GPUs; logged once per new reason
        self._retry_at = 0.0  # after a failure, NVML is left alone until then (monotonic)
        self._torch_build = torch_cuda_build()

    def read(self) -> Inventory:
        host = read_host(self.storage_dir, self.storage_quota)
        try:
            if self._failure and time.monotonic() < self._retry_at:
                raise _StillFailing(self._failure)
            gpus, driver, cuda = self._read_gpus()
        except Exception as exc:  # noqa: BLE001 - any driver failure means CPU-only, never a crash
            reason = str(exc) if isinstance(exc, _StillFailing) else why_no_gpu(exc)
            self._cpu_only(reason)
            return Inventory((), host.cpu_cores, host.ram_total, host.ram_free, host.storage_free,
                             torch_cuda=False, note=reason)
        if self._failure:
            log.info("NVIDIA driver available again: %d GPU(s)", len(gpus))
            self._failure = ""
        driver_cuda = _parse_cuda(cuda)
        torch_cuda = derive_torch_cuda(len(gpus), driver_cuda, self._torch_build)
        note = f"{len(gpus)} GPU(s) through NVML" if gpus else "CPU-only: the driver reports no GPU"
        return Inventory(tuple(gpus), host.cpu_cores, host.ram_total, host.ram_free, host.storage_free,
                         driver_version=driver, cuda_version=cuda, torch_cuda=torch_cuda, note=note)

    def close(self) -> None:
        if self._ready and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a broken driver must not fail the node
                log.debug("nvmlShutdown failed", exc_info=True)
            self._ready = False

    def _cpu_only(self, reason: str) -> None:
        if reason != self._failure:
            # a machine without the driver is an ordinary CPU node (the capacity service's
            # start-up line says so); a driver that is there and fails is worth a warning
            log.log(logging.DEBUG if reason == NO_DRIVER else logging.WARNING, "%s", reason)
            self._failure = reason
            self._retry_at = time.monotonic() + self.retry_after
        elif time.monotonic() >= self._retry_at:
            self._retry_at = time.monotonic() + self.retry_after
        self._ready = False

    def _module(self) -> ModuleType:
        if self._nvml is None:
            with warnings.catch_warnings():
                # The `pynvml` dist warns that it is deprecated in favour of nvidia-ml-py,
                # which provides the very module it loads.
                warnings.simplefilter("ignore", FutureWarning)
                import pynvml
            self._nvml = pynvml
        return self._nvml

    def _read_gpus(self) -> tuple[list[Gpu], str, str]:
        nvml = self._module()
        if not self._ready:
            nvml.nvmlInit()
            self._ready = True
        driver = _text(_optional(nvml, nvml.nvmlSystemGetDriverVersion) or "")
        cuda_raw = _optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if isinstance(cuda_raw, int) else ""
        gpus = []
        for index in range(min(nvml.nvmlDeviceGetCount(), MAX_GPUS)):
            try:
                gpus.append(self._read_gpu(nvml, index))
            except nvml.NVMLError as exc:
                # One GPU fallen off the bus should not hide the others.
                log.warning("GPU %d unreadable, left out of the inventory: %s", index, exc)
        return gpus, driver, cuda

    def _read_gpu(self, nvml: ModuleType, index: int) -> Gpu:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        cc = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle) or (0, 0)
        util = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        power = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        limit = _optional(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        mask = _optional(nvml, reasons, handle) if reasons is not None else None
        return Gpu(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle))[:96],
            uuid=_text(nvml.nvmlDeviceGetUUID(handle))[:96],
            memory_total=int(memory.total),
            memory_free=min(int(memory.free), int(memory.total)),
            compute_capability=(int(cc[0]), int(cc[1])),
            utilization=_clamp(util.gpu if util is not None else None, 0, 100),
            temperature_c=_clamp(_optional(nvml, nvml.nvmlDeviceGetTemperature, handle,
                                           nvml.NVML_TEMPERATURE_GPU), 0, 250),
            power_w=round(power / 1000.0, 1) if power is not None else None,
            power_limit_w=round(limit / 1000.0, 1) if limit is not None else None,
            pcie_gen=_clamp(_optional(nvml, nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle), 1, 32),
            pcie_width=_clamp(_optional(nvml, nvml.nvmlDeviceGetCurrPcieLinkWidth, handle), 1, 64),
            throttle=throttle_names(mask),
        )


NO_DRIVER = "no NVIDIA driver found; this node runs CPU jobs"


def why_no_gpu(exc: BaseException) -> str:
    """What an NVML failure means for the owner, in words (the raw NVML error name only
    where the driver is there and failing)."""
    name = type(exc).__name__
    if name == "NVMLError_LibraryNotFound":
        return NO_DRIVER
    if name == "NVMLError_DriverNotLoaded":
        return "the NVIDIA driver is installed but not loaded; this node runs CPU jobs"
    if name == "NVMLError_NoPermission":
        return "no permission to use the NVIDIA driver; this node runs CPU jobs"
    return f"the NVIDIA driver failed ({name}: {exc}); this node runs CPU jobs"


class _StillFailing(Exception):
    """NVML failed recently; not asked again before the retry time."""


def _optional(nvml: ModuleType, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or None when this GPU or driver does not support it."""
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _clamp(value: Any, lo: int, hi: int) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        return None
    return value


def _parse_cuda(text: str) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


# --------------------------------------------------------------------------- simulated


_GPU_KEYS = {f.name for f in dataclasses.fields(Gpu)}
_GPU_RANGES = {"utilization": (0, 100), "temperature_c": (0, 250), "pcie_gen": (1, 32),
               "pcie_width": (1, 64)}
_FILE_KEYS = {"gpus", "cpu_cores", "ram_total", "ram_free", "storage_free", "driver_version",
              "cuda_version", "torch_cuda"}


def parse_inventory_json(data: Any, host: HostFacts, note: str = "") -> Inventory:
    """An :class:`Inventory` from a decoded simulated-inventory document.

    Sizes may be ints or strings like ``"80GiB"``; host fields that are left
    out come from ``host``. Raises ValueError naming the first problem.
    """
    if not isinstance(data, dict):
        raise ValueError("the document must be a JSON object")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_FILE_KEYS))})")
    raw_gpus = data.get("gpus", [])
    if not isinstance(raw_gpus, list) or len(raw_gpus) > MAX_GPUS:
        raise ValueError(f"'gpus' must be a list of at most {MAX_GPUS}")
    gpus = tuple(_parse_gpu(i, g) for i, g in enumerate(raw_gpus))
    torch_cuda = data.get("torch_cuda", bool(gpus))
    if torch_cuda is not None and not isinstance(torch_cuda, bool):
        raise ValueError("'torch_cuda' must be true, false or null")
    ram_total = parse_size(data.get("ram_total", host.ram_total))
    return Inventory(
        gpus=gpus,
        cpu_cores=_int(data.get("cpu_cores", host.cpu_cores), "cpu_cores", 0, 65536),
        ram_total=ram_total,
        ram_free=min(parse_size(data.get("ram_free", host.ram_free)), ram_total),
        storage_free=parse_size(data.get("storage_free", host.storage_free)),
        driver_version=str(data.get("driver_version", ""))[:32],
        cuda_version=str(data.get("cuda_version", ""))[:16],
        torch_cuda=torch_cuda,
        simulated=True,
        note=note,
    )


def _parse_gpu(index: int, raw: Any) -> Gpu:
    where = f"gpus[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(raw) - _GPU_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    try:
        total = parse_size(raw["memory_total"])
        free = parse_size(raw.get("memory_free", total))
        cc = _parse_cuda(str(raw.get("compute_capability", "0.0")))
        if cc is None:
            raise ValueError("compute_capability must look like '8.0'")
        optional = {k: raw.get(k) for k in _GPU_RANGES}
        for key, value in optional.items():
            if value is not None:
                _int(value, key, *_GPU_RANGES[key])
        return Gpu(
            index=_int(raw.get("index", index), "index", 0, 255),
            name=str(raw.get("name", "simulated GPU"))[:96],
            uuid=str(raw.get("uuid", f"GPU-simulated-{index}"))[:96],
            memory_total=total,
            memory_free=min(free, total),
            compute_capability=cc,
            power_w=_float_or_none(raw.get("power_w")),
            power_limit_w=_float_or_none(raw.get("power_limit_w")),
            throttle=_throttle(raw.get("throttle", ())),
            **optional,
        )
    except KeyError as exc:
        raise ValueError(f"{where}: missing {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _throttle(value: Any) -> tuple[str, ...]:
    known = set(THROTTLE_BITS.values())
    if not isinstance(value, list | tuple) or len(value) > len(known) or not set(value) <= known:
        raise ValueError(f"throttle must be a list of {', '.join(sorted(known))}")
    return tuple(value)


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{key} must be an integer in {lo}..{hi}")
    return value


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100_000:
        raise ValueError("power must be a number of watts")
    return float(value)


class FileProvider:
    """A fixed inventory from a JSON file, re-read whenever the file changes.

    The file must be valid when the provider is created (:class:`InventoryError`
    otherwise). A later invalid edit is logged and the last good reading kept,
    so a half-written file never takes the node's GPUs away.
    """

    simulated = True

    def __init__(self, path: Path, storage_dir: Path, *, storage_quota: int | None = None) -> None:
        self.path = path
        self.storage_dir = storage_dir
        self.storage_quota = storage_quota
        self._stamp: tuple[int, int] | None = None
        self._last: Inventory | None = None
        try:
            self._last = self._load()
        except (OSError, ValueError) as exc:
            raise InventoryError(f"inventory_file {path}: {exc}") from None

    def read(self) -> Inventory:
        try:
            return self._load()
        except (OSError, ValueError) as exc:
            log.warning("inventory_file %s unusable, keeping the last reading: %s", self.path, exc)
            assert self._last is not None
            return self._last

    def close(self) -> None:
        pass

    def _load(self) -> Inventory:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and self._last is not None:
            return self._last
        if stat.st_size > MAX_INVENTORY_FILE:
            raise ValueError(f"larger than {MAX_INVENTORY_FILE} bytes")
        data = json.loads(self.path.read_bytes())
        host = read_host(self.storage_dir, self.storage_quota)
        inventory = parse_inventory_json(data, host, note=f"simulated from {self.path}")
        self._stamp, self._last = stamp, inventory
        return inventory


def open_provider(inventory_file: str, storage_dir: Path,
                  storage_quota: int | None = None) -> InventoryProvider:
    """The provider the config asks for: the file when one is named, else NVML."""
    if inventory_file:
        return FileProvider(Path(inventory_file).expanduser(), storage_dir, storage_quota=storage_quota)
    return NvmlProvider(storage_dir, storage_quota=storage_quota)
