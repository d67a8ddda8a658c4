"""Inventory: NVML through a fake driver (no GPU needed), the CPU-only fallback, simulated files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from poolai.node.capacity import inventory
from poolai.node.capacity.inventory import FileProvider, InventoryError, NvmlProvider
from poolai.node.capacity.rules import LocalState, make_advert

GiB = 1 << 30


class FakeNvml(types.ModuleType):
    """The slice of pynvml the provider uses, with failures on demand."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict], *, init_error: Exception | None = None) -> None:
        super().__init__("fake_nvml")
        self.gpus = gpus
        self.init_error = init_error
        self.count_error: Exception | None = None
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        if self.count_error:
            raise self.count_error
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def _get(self, handle, key):
        value = handle.get(key)
        if isinstance(value, Exception):
            raise value
        if value is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return value

    def nvmlDeviceGetName(self, h):
        return self._get(h, "name")

    def nvmlDeviceGetUUID(self, h):
        return self._get(h, "uuid")

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=h["total"], free=h["free"], used=h["total"] - h["free"])

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._get(h, "cc")

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=self._get(h, "util"), memory=0)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get(h, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._get(h, "limit_mw")

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return self._get(h, "gen")

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return self._get(h, "width")


def h100(**changes) -> dict:
    base = {"name": b"NVIDIA H100 80GB HBM3", "uuid": "GPU-1111", "total": 80 * GiB, "free": 79 * GiB,
            "cc": (9, 0), "util": 7, "temp": 33, "power_mw": 71_234, "limit_mw": 700_000, "gen": 5,
            "width": 16}
    return {**base, **changes}


def provider(tmp_path, nvml, retry_after: float = 0.0) -> NvmlProvider:
    return NvmlProvider(tmp_path, nvml=nvml, retry_after=retry_after)


def test_reads_every_field_through_nvml(tmp_path):
    inv = provider(tmp_path, FakeNvml([h100(), h100(uuid="GPU-2222", free=10 * GiB)])).read()
    assert [g.uuid for g in inv.gpus] == ["GPU-1111", "GPU-2222"]
    first = inv.gpus[0]
    assert (first.name, first.memory_total, first.memory_free, first.compute_capability) == (
        "NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB, (9, 0))
    assert (first.utilization, first.temperature_c, first.power_w, first.power_limit_w) == (
        7, 33, 71.2, 700.0)
    assert (first.pcie_gen, first.pcie_width) == (5, 16)
    assert (inv.driver_version, inv.cuda_version, inv.simulated) == ("550.54.15", "12.4", False)
    assert inv.cpu_cores >= 1 and inv.ram_total >= inv.ram_free > 0 and inv.storage_free > 0
    json.dumps(inv.to_json())


def test_unsupported_optional_fields_are_none(tmp_path):
    inv = provider(tmp_path, FakeNvml([h100(util=None, temp=None, power_mw=None, gen=None, width=99)])).read()
    gpu = inv.gpus[0]
    assert (gpu.utilization, gpu.temperature_c, gpu.power_w, gpu.pcie_gen, gpu.pcie_width) == (
        None, None, None, None, None)


def test_no_driver_means_cpu_only_said_in_words(tmp_path, caplog):
    nvml = FakeNvml([], init_error=FakeNvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    p = provider(tmp_path, nvml, retry_after=60.0)
    with caplog.at_level(logging.DEBUG, logger="poolai.node.capacity.inventory"):
        first, second = p.read(), p.read()
    assert first.gpus == () and second.gpus == () and first.torch_cuda is False
    assert first.note == second.note == "no NVIDIA driver found; this node runs CPU jobs"
    assert nvml.inits == 1  # not asked again before the retry time
    said = [r for r in caplog.records if "CPU jobs" in r.getMessage()]
    assert [r.levelname for r in said] == ["DEBUG"]  # an ordinary CPU node: no warning


def test_a_driver_that_is_there_and_fails_is_a_warning(tmp_path, caplog):
    nvml = FakeNvml([], init_error=FakeNvml.NVMLError_GpuIsLost("GPU is lost"))
    with caplog.at_level(logging.WARNING, logger="poolai.node.capacity.inventory"):
        inv = provider(tmp_path, nvml).read()
    assert inv.note == "the NVIDIA driver failed (NVMLError_GpuIsLost: GPU is lost); this node runs CPU jobs"
    assert [r.getMessage() for r in caplog.records] == [inv.note]


def test_a_driver_failing_later_degrades_to_cpu_and_recovers(tmp_path):
    nvml = FakeNvml([h100()])
    p = provider(tmp_path, nvml)
    assert len(p.read().gpus) == 1
    nvml.count_error = FakeNvml.NVMLError_GpuIsLost("GPU is lost")
    assert p.read().gpus == ()
    nvml.count_error = None
    assert len(p.read().gpus) == 1 and nvml.inits == 2  # re-initialised after the failure


def test_any_exception_from_the_driver_is_contained(tmp_path):
    nvml = FakeNvml([], init_error=OSError("libnvidia-ml.so.1: cannot open shared object file"))
    inv = provider(tmp_path, nvml).read()
    assert inv.gpus == () and "OSError" in inv.note


def test_one_unreadable_gpu_does_not_hide_the_others(tmp_path):
    nvml = FakeNvml([h100(name=FakeNvml.NVMLError_GpuIsLost("GPU is lost")), h100(uuid="GPU-ok")])
    assert [g.uuid for g in provider(tmp_path, nvml).read().gpus] == ["GPU-ok"]


def test_close_shuts_nvml_down_once(tmp_path):
    nvml = FakeNvml([h100()])
    p = provider(tmp_path, nvml)
    p.read()
    p.close()
    p.close()
    assert nvml.shutdowns == 1


@pytest.mark.parametrize(("gpus", "driver", "build", "expected"), [
    (1, (12, 4), (12, 1), True),
    (1, (12, 4), (13, 0), False),
    (1, (12, 4), None, False),  # a CPU build of torch
    (1, (12, 4), False, False),  # torch not installed
    (0, (12, 4), (12, 1), False),
    (1, None, (12, 1), None),
])
def test_torch_cuda_is_derived(gpus, driver, build, expected):
    assert inventory.derive_torch_cuda(gpus, driver, build) is expected


def test_reading_torchs_build_does_not_import_torch():
    code = ("import sys; from poolai.node.capacity.inventory import torch_cuda_build, NvmlProvider; "
            "from pathlib import Path; b = torch_cuda_build(); NvmlProvider(Path('.')).read(); "
            "import poolai.node.capacity.service, poolai.node.cli.main; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(repr(b))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("None", "False") or out.stdout.startswith("(")


# --------------------------------------------------------------------------- simulated


def write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # a new inode and mtime: the provider sees the change


SIM = {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_total": "80GiB", "memory_free": "70GiB",
                 "compute_capability": "8.0", "utilization": 0}],
       "cpu_cores": 64, "ram_total": "512GiB", "ram_free": "400GiB", "driver_version": "550.54",
       "cuda_version": "12.4"}


def test_file_provider_reads_marks_simulated_and_follows_changes(tmp_path):
    path = tmp_path / "inv.json"
    write(path, SIM)
    p = FileProvider(path, tmp_path)
    inv = p.read()
    assert inv.simulated and inv.cpu_cores == 64 and inv.ram_free == 400 * GiB and inv.torch_cuda
    assert inv.gpus[0].memory_free == 70 * GiB and inv.gpus[0].compute_capability == (8, 0)
    assert inv.storage_free > 0  # not in the file: taken from the host
    write(path, {**SIM, "gpus": [{**SIM["gpus"][0], "memory_free": "10GiB"}]})
    assert p.read().gpus[0].memory_free == 10 * GiB


def test_a_broken_edit_keeps_the_last_good_reading(tmp_path, caplog):
    path = tmp_path / "inv.json"
    write(path, SIM)
    p = FileProvider(path, tmp_path)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="poolai.node.capacity.inventory"):
        assert p.read().gpus[0].memory_free == 70 * GiB
    assert "keeping the last reading" in caplog.text


@pytest.mark.parametrize("doc", [
    {"gpus": [{"name": "x"}]},  # no memory_total
    {"gpus": [{"memory_total": "8GiB", "compute_capability": "eight"}]},
    {"gpus": [{"memory_total": "8GiB", "utilization": 101}]},
    {"gpu": []},
    {"gpus": [{"memory_total": "8GiB"}] * 17},
    [],
])
def test_an_invalid_file_is_a_configuration_error(tmp_path, doc):
    path = tmp_path / "inv.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InventoryError):
        FileProvider(path, tmp_path)


def test_missing_file_is_a_configuration_error(tmp_path):
    with pytest.raises(InventoryError):
        inventory.open_provider(str(tmp_path / "absent.json"), tmp_path)


def test_simulated_inventory_makes_a_valid_advert(tmp_path):
    from test_adverts import key

    from poolai.mesh import adverts

    path = tmp_path / "inv.json"
    write(path, {**SIM, "gpus": SIM["gpus"] * 8})
    private, public, peer = key(3)
    ad = make_advert(FileProvider(path, tmp_path).read(), LocalState(peer, "poolai/0.1.0", 4),
                     seq=1, now=1000.0, ttl=30.0)
    assert ad.simulated and len(ad.gpus) == 8
    assert adverts.verify(adverts.sign(ad, private.sign, public), now=1000.0) == ad
