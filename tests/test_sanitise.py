"""The .pt2 sanitiser refuses every known way a crafted archive runs code or reads files.

Each attack archive is a real ``torch.export.save`` of a tiny MLP, edited as a zip. Its
payload touches a marker file; the marker must never appear. A few control tests load
the *raw* attack with ``torch.export.load`` to show the payload is live.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from poolai.node.jobs.sanitise import (
    ALLOWED_OPS,
    Pt2Limits,
    UnsafeProgram,
    sanitise_pt2,
)

ROOT = "mlp"  # torch.export.save names the archive's root folder after the file


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(16, 32)
        self.l2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


class Touch:
    """Pickles to ``os.system("touch <path>")``: unpickling it runs the command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.path}",))


@pytest.fixture(scope="session")
def mlp_pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, TinyMLP]:
    torch.manual_seed(0)
    model = TinyMLP().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(8, 16),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path_factory.mktemp("pt2") / f"{ROOT}.pt2"
    torch.export.save(ep, path)
    return path.read_bytes(), model


def members_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return out.getvalue()


def edit_json(data: bytes, member: str, edit: Callable[[dict], None]) -> bytes:
    members = members_of(data)
    doc = json.loads(members[f"{ROOT}/{member}"])
    edit(doc)
    members[f"{ROOT}/{member}"] = json.dumps(doc).encode()
    return zip_of(members)


def torch_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def nodes(doc: dict) -> list[dict]:
    return doc["graph_module"]["graph"]["nodes"]


# ----------------------------------------------------------------------------- attacks


def _pickled_member(member: str) -> Callable[[bytes, Path], bytes]:
    """An attack that puts a pickle that touches the marker at ``member`` (below ROOT)."""
    def attack(data: bytes, marker: Path) -> bytes:
        members = members_of(data)
        members[f"{ROOT}/{member}"] = torch_pickle(Touch(marker))
        return zip_of(members)
    return attack


sample_inputs_pickle = _pickled_member("data/sample_inputs/model.pt")


def use_pickle_weight(data: bytes, marker: Path) -> bytes:
    members = members_of(data)
    config = json.loads(members[f"{ROOT}/data/weights/model_weights_config.json"])
    config["config"]["l1.weight"]["use_pickle"] = True
    members[f"{ROOT}/data/weights/model_weights_config.json"] = json.dumps(config).encode()
    members[f"{ROOT}/data/weights/weight_0"] = torch_pickle(Touch(marker))
    return zip_of(members)


def _object_constant(prefix: str) -> Callable[[bytes, Path], bytes]:
    def attack(data: bytes, marker: Path) -> bytes:
        members = members_of(data)
        name = f"{ROOT}/data/constants/model_constants_config.json"
        config = json.loads(members[name])
        config["config"]["obj"] = {"path_name": f"{prefix}0", "is_param": False,
                                   "use_pickle": False, "tensor_meta": None}
        members[name] = json.dumps(config).encode()
        members[f"{ROOT}/data/constants/{prefix}0"] = pickle.dumps(Touch(marker))
        return zip_of(members)
    return attack


def pre_28_format(data: bytes, marker: Path) -> bytes:
    doc = members_of(data)[f"{ROOT}/models/model.json"]
    return zip_of({"version": b"8.20", "serialized_exported_program.json": doc,
                   "serialized_state_dict.pt": torch_pickle(Touch(marker)),
                   "serialized_constants.pt": torch_pickle({}),
                   "serialized_example_inputs.pt": torch_pickle(Touch(marker))})


def aoti_library(data: bytes, marker: Path) -> bytes:
    members = members_of(data)
    members[f"{ROOT}/data/aotinductor/model/model.so"] = b"\x7fELF" + bytes(60)
    members[f"{ROOT}/data/aotinductor/model/model.cpp"] = b"// loaded with dlopen"
    return zip_of(members)


def from_file_node(data: bytes, marker: Path) -> bytes:
    def edit(doc: dict) -> None:
        nodes(doc)[1]["target"] = "torch.ops.aten.from_file.default"
    return edit_json(data, "models/model.json", edit)


def os_system_node(data: bytes, marker: Path) -> bytes:
    def edit(doc: dict) -> None:
        nodes(doc)[1]["target"] = "torch.serialization.os.system"
    return edit_json(data, "models/model.json", edit)


def nested_subgraph_node(data: bytes, marker: Path) -> bytes:
    def edit(doc: dict) -> None:
        inner = {"graph": {"nodes": [{"target": "torch.ops.aten.from_file.default"}]}}
        nodes(doc)[1]["inputs"].append({"name": "body", "arg": {"as_graph": inner}, "kind": 1})
    return edit_json(data, "models/model.json", edit)


def operator_argument(data: bytes, marker: Path) -> bytes:
    def edit(doc: dict) -> None:
        nodes(doc)[1]["inputs"].append(
            {"name": "fn", "arg": {"as_operator": "torch.serialization.os.system"}, "kind": 1})
    return edit_json(data, "models/model.json", edit)


def sympy_expression(data: bytes, marker: Path) -> bytes:
    # torch parses expr_str with sympy.sympify, which evaluates it as Python.
    def edit(doc: dict) -> None:
        size = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]
        size["expr_str"] = (f"__import__('os').system('touch {marker}') or "
                            "Symbol('s77', positive=True, integer=True)")
    return edit_json(data, "models/model.json", edit)


def placeholder_name(data: bytes, marker: Path) -> bytes:
    # FX pastes placeholder names into the forward() source it generates and execs.
    members = members_of(data)
    text = members[f"{ROOT}/models/model.json"].decode()
    evil = f"x=__import__('os').system('touch {marker}')"
    members[f"{ROOT}/models/model.json"] = text.replace('"x"', json.dumps(evil)).encode()
    return zip_of(members)


def guards_code(data: bytes, marker: Path) -> bytes:
    # ep.module() execs guards_code to build its input guard function.
    def edit(doc: dict) -> None:
        doc["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    return edit_json(data, "models/model.json", edit)


def custom_pytree_type(data: bytes, marker: Path) -> bytes:
    def edit(doc: dict) -> None:
        sig = doc["graph_module"]["module_call_graph"][0]["signature"]
        sig["in_spec"] = sig["in_spec"].replace("builtins.tuple", "os.system", 1)
    return edit_json(data, "models/model.json", edit)


def empty_payload_size_bomb(data: bytes, marker: Path) -> bytes:
    # An empty weight member makes torch allocate zeros(sizes): a memory bomb.
    members = members_of(data)
    name = f"{ROOT}/data/weights/model_weights_config.json"
    config = json.loads(members[name])
    config["config"]["l1.weight"]["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}] * 2
    members[name] = json.dumps(config).encode()
    members[f"{ROOT}/data/weights/weight_0"] = b""
    return zip_of(members)


def extra_member(data: bytes, marker: Path) -> bytes:
    members = members_of(data)
    members[f"{ROOT}/extra/notes.txt"] = b"hello"
    return zip_of(members)


def object_config_only(data: bytes, marker: Path) -> bytes:
    members = members_of(data)
    name = f"{ROOT}/data/constants/model_constants_config.json"
    config = json.loads(members[name])
    config["config"]["obj"] = {"path_name": "opaque_obj_0", "is_param": False,
                               "use_pickle": False, "tensor_meta": None}
    members[name] = json.dumps(config).encode()
    return zip_of(members)


# attack -> (archive builder, what the refusal must say)
ATTACKS: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "use_pickle weight": (use_pickle_weight, "use_pickle"),
    "opaque_obj constant": (_object_constant("opaque_obj_"), "pickled object constant"),
    "custom_obj constant": (_object_constant("custom_obj_"), "pickled object constant"),
    "opaque_obj config entry": (object_config_only, "pickled object constant"),
    "legacy data/weights/model.pt": (_pickled_member("data/weights/model.pt"), "legacy pickled member"),
    "legacy data/constants/model.pt": (_pickled_member("data/constants/model.pt"), "legacy pickled member"),
    "pre-2.8 format": (pre_28_format, "pre-2.8 format"),
    "AOTInductor library": (aoti_library, "AOTInductor"),
    "aten.from_file node": (from_file_node, "'torch.ops.aten.from_file.default' is not on"),
    "os.system node": (os_system_node, "'torch.serialization.os.system' is not on"),
    "from_file in a nested subgraph": (nested_subgraph_node, "from_file.default' is not on"),
    "os.system as an operator argument": (operator_argument, "os.system' is not on"),
    "sympify expr_str": (sympy_expression, "expr_str"),
    "placeholder name injection": (placeholder_name, "in 'name' is not accepted"),
    "guards_code": (guards_code, "guards_code"),
    "custom pytree type": (custom_pytree_type, "pytree type 'os.system'"),
    "empty payload size bomb": (empty_payload_size_bomb, "the view reaches element"),
    "extra member": (extra_member, "'extra/notes.txt' is not on the allow-list"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_is_refused_and_nothing_runs(mlp_pt2, tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "pwned"
    build, reason = ATTACKS[attack]
    with pytest.raises(UnsafeProgram, match=re.escape(reason)):
        sanitise_pt2(build(mlp_pt2[0], marker))
    assert not marker.exists()


def test_pickled_sample_inputs_are_stripped_and_nothing_runs(mlp_pt2, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    clean = sanitise_pt2(sample_inputs_pickle(mlp_pt2[0], marker))
    ep = torch.export.load(io.BytesIO(clean.archive))
    x = torch.randn(5, 16)
    assert torch.equal(ep.module()(x), mlp_pt2[1](x))
    assert ep.example_inputs is None
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["use_pickle weight", "sympify expr_str", "guards_code",
                                    "placeholder name injection"])
def test_control_raw_torch_load_runs_the_payload(mlp_pt2, tmp_path: Path, attack: str) -> None:
    # Shows the payloads above are live: unsanitised, torch.export.load runs them.
    marker = tmp_path / "pwned"
    archive = ATTACKS[attack][0](mlp_pt2[0], marker)
    try:
        torch.export.load(io.BytesIO(archive)).module()(torch.randn(2, 16))
    except Exception:  # some payloads break the program after running
        pass
    assert marker.exists()


def test_refusals_happen_without_torch(mlp_pt2, tmp_path: Path) -> None:
    """In a process where importing torch fails, every attack is still refused."""
    for i, (build, _) in enumerate(ATTACKS.values()):
        (tmp_path / f"attack{i}.pt2").write_bytes(build(mlp_pt2[0], tmp_path / "pwned"))
    (tmp_path / "legit.pt2").write_bytes(mlp_pt2[0])
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from pathlib import Path
from poolai.node.jobs.sanitise import UnsafeProgram, sanitise_pt2
d = Path({str(tmp_path)!r})
for i in range({len(ATTACKS)}):
    try:
        sanitise_pt2((d / f"attack{{i}}.pt2").read_bytes())
    except UnsafeProgram:
        continue
    raise SystemExit(f"attack {{i}} was accepted")
sanitise_pt2((d / "legit.pt2").read_bytes())
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m])
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.stdout.strip() == b"ok", proc.stderr.decode()[-2000:]
    assert not (tmp_path / "pwned").exists()


SYMBOL = "Symbol('s77', positive=True, integer=True)"


@pytest.mark.parametrize("expr, accepted", [
    (SYMBOL, True),
    (f"Mul(Integer(-4), {SYMBOL})", True),
    (f"Min(Integer(32), Mul(Integer(32), {SYMBOL}))", True),
    (f"Pow({SYMBOL}, Integer(2))", True),
    ("Pow(Pow(Integer(999999999999), Integer(8)), Integer(8))", False),  # a huge constant
    (f"Pow({SYMBOL}, Integer(99))", False),
    (f"{SYMBOL}.__class__", False),
    (f"Add({SYMBOL}, Integer(1)) + Integer(2)", False),  # only srepr's call form
    ("Symbol('s77', commutative=False)", False),
    ("Symbol('s77'), __import__('os')", False),
    ("lambda: 0", False),
    ("s77", False),
])
def test_expressions_follow_the_srepr_grammar(mlp_pt2, expr: str, accepted: bool) -> None:
    def edit(doc: dict) -> None:
        doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]["expr_str"] = expr
    archive = edit_json(mlp_pt2[0], "models/model.json", edit)
    if accepted:
        sanitise_pt2(archive)
    else:
        with pytest.raises(UnsafeProgram, match="expr_str"):
            sanitise_pt2(archive)


def test_legit_archive_is_rebuilt_and_matches_eager(mlp_pt2) -> None:
    data, model = mlp_pt2
    clean = sanitise_pt2(data)
    assert clean.input_names == ("x",)
    assert set(clean.parameter_names) == set(model.state_dict())
    assert clean.ops == {"torch.ops.aten.linear.default", "torch.ops.aten.relu.default"}
    ep = torch.export.load(io.BytesIO(clean.archive))
    module = ep.module()
    for batch in (1, 8, 100):
        x = torch.randn(batch, 16)
        assert torch.equal(module(x), model(x))
    with pytest.raises((AssertionError, RuntimeError), match="16"):  # the shape guard holds
        module(torch.randn(2, 15))
    rebuilt = members_of(clean.archive)
    assert rebuilt["archive/data/sample_inputs/model.pt"] == b""
    graph = json.loads(rebuilt["archive/models/model.json"])
    assert all(node["metadata"] == {} for node in nodes(graph))


def test_declared_member_size_over_cap_is_refused(mlp_pt2) -> None:
    members = members_of(mlp_pt2[0])
    members[f"{ROOT}/data/weights/weight_9"] = bytes(2 << 20)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:  # 2 MiB of zeros: ~2 KiB
        for name, body in members.items():
            zf.writestr(name, body)
    with pytest.raises(UnsafeProgram, match="declares"):
        sanitise_pt2(out.getvalue(), Pt2Limits(max_member_bytes=1 << 20))
    with pytest.raises(UnsafeProgram, match="in total"):
        sanitise_pt2(out.getvalue(), Pt2Limits(max_total_bytes=1 << 20))


def test_a_member_that_inflates_too_far_is_refused_before_it_is_read(mlp_pt2) -> None:
    """Two members of zeros deflated a thousandfold, each under every declared-size cap."""
    members = members_of(mlp_pt2[0])
    for i in (8, 9):
        members[f"{ROOT}/data/weights/weight_{i}"] = bytes(8 << 20)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    assert len(out.getvalue()) < 100_000
    with pytest.raises(UnsafeProgram, match=r"inflates \d+ bytes to 8388608, more than 200:1"):
        sanitise_pt2(out.getvalue())
    # the same members stored, not deflated, pass: the rule is about inflating, not contents
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    assert sanitise_pt2(stored.getvalue()).archive


def test_member_larger_than_declared_is_refused(mlp_pt2) -> None:
    """A zip bomb that under-declares its size: reads are capped and checked."""
    data = bytearray(mlp_pt2[0])
    name = f"{ROOT}/models/model.json".encode()
    pos = data.find(b"PK\x01\x02")  # first central directory entry
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46: pos + 46 + name_len] == name:
            struct.pack_into("<I", data, pos + 24, 100)  # declared uncompressed size
            break
        pos = data.find(b"PK\x01\x02", pos + 4)
    assert pos != -1
    with pytest.raises(UnsafeProgram):
        sanitise_pt2(bytes(data))


def test_garbage_and_truncated_archives_are_refused(mlp_pt2) -> None:
    for data in (b"", b"not a zip", mlp_pt2[0][: len(mlp_pt2[0]) // 2]):
        with pytest.raises(UnsafeProgram):
            sanitise_pt2(data)


def test_op_allow_list_is_explicit() -> None:
    assert "torch.ops.aten.from_file.default" not in ALLOWED_OPS
    assert {"_operator.mul", "torch.ops.aten.sym_size.int"} <= ALLOWED_OPS
    assert all(op.startswith(("torch.ops.aten.", "_operator.")) for op in ALLOWED_OPS)
