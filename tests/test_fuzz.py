"""Every decoder of peer input, fuzzed: it returns a valid object or raises its own documented error.

The targets (``scripts/fuzz_targets.py``) are frames and rpc, every declared message, the
manifest, capacity adverts, credit receipts, job specs and result records, the .pt2
sanitiser and safetensors headers. Each test here runs a bounded number of examples so the
module stays a few seconds long; ``scripts/fuzz.py TARGET --minutes M`` runs the same
targets for longer. Crashes the fuzzer found are kept below as regressions, each with its
failing input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolai.mesh import adverts, schema, wire
from poolai.mesh.errors import ProtocolError
from poolai.node.credits import receipts
from poolai.node.jobs import protocol as job_protocol
from poolai.node.jobs import sanitise, spec
from poolai.storage import manifest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fuzz_targets as ft  # noqa: E402

# Inputs are small, but a loaded two-core machine can stall any one example: no deadline.
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
PER_MESSAGE = settings(FUZZ, max_examples=12)

DECODERS = ["frames", "rpc", "unpack", "messages", "manifest", "advert", "receipt", "job_spec",
            "job_result", "pt2", "safetensors"]
MESSAGES = sorted(ft.message_classes())


def test_every_declared_message_is_fuzzed():
    assert set(ft.GOLDEN["messages"]) <= set(MESSAGES)  # found by walking the packages
    assert set(ft.targets()) == set(DECODERS) | {f"message:{name}" for name in MESSAGES}


# ----------------------------------------------------------------------------- no other errors


def _fuzz(name: str, config: settings) -> None:
    target = ft.targets()[name]

    @config
    @given(target.inputs)
    def run(data: bytes) -> None:
        target.run(data)

    run()


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_returns_a_valid_object_or_its_own_error(name):
    _fuzz(name, FUZZ)


@pytest.mark.parametrize("type_name", MESSAGES)
def test_message_decodes_to_itself_or_a_protocol_error(type_name):
    _fuzz(f"message:{type_name}", PER_MESSAGE)


def test_the_inputs_reach_past_the_first_check():
    """Mutated inputs must not all be refused at once: some decode, some fail deep inside."""
    accepted = 0
    for data in [*(bytes.fromhex(h) for h in ft.GOLDEN["messages"]["store.fetch"].values())]:
        accepted += ft.targets()["message:store.fetch"].run(data) is not None
    assert accepted == 3
    assert ft.targets()["advert"].run(bytes.fromhex(ft.GOLDEN["advert"])) is not None
    assert ft.targets()["pt2"].run(ft.PT2_SEED) is not None


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("type_name", MESSAGES)
def test_generated_messages_round_trip(type_name):
    cls = ft.message_classes()[type_name]

    @PER_MESSAGE
    @given(ft.valid_message(cls))
    def run(msg):
        assert wire.decode(wire.encode(msg), cls) == msg
        assert schema.from_wire(cls, schema.to_wire(msg)) == msg

    run()


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5), st.integers(1, 50))
def test_frames_come_out_as_they_went_in_however_split(bodies, chunk):
    data = b"".join(wire.frame(b, ft.MAX_FRAME) for b in bodies)
    assert ft._frames(data, chunk) == (bodies, None)


@FUZZ
@given(ft.valid_manifest())
def test_manifests_round_trip(m):
    assert manifest.decode(m.encode()) == m


@FUZZ
@given(ft.valid_advert())
def test_signed_adverts_round_trip(advert):
    key = ft.signing_key(1)
    envelope = adverts.sign(advert, key.sign, key.public_key)
    assert adverts.verify(envelope, now=advert.timestamp) == advert


@FUZZ
@given(ft.valid_claim())
def test_receipts_round_trip(claim):
    started = receipts.start_receipt(claim, ft.signing_key(2))
    checked = receipts.check_receipt(receipts.add_signature(started, ft.signing_key(1)))
    assert checked.claim == claim and checked.complete
    assert receipts.check_receipt(started, complete=False).claim == claim


_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda n: ".." not in n)
FILES = st.builds(spec.FileRef, _NAME, st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                  st.integers(0, spec.MAX_FILE_BYTES))
MLPS = st.builds(spec.MLPConfig, st.integers(1, 64), st.lists(st.integers(1, 64), max_size=3)
                 .map(tuple), st.integers(1, 64), st.sampled_from(spec.Activation))
TRANSFORMERS = st.builds(
    lambda heads, per_head, **kw: spec.TransformerConfig(d_model=heads * per_head, n_heads=heads, **kw),
    st.integers(1, 4), st.integers(8, 16), vocab_size=st.integers(2, 100),
    n_layers=st.integers(1, 2), d_ff=st.integers(8, 64), max_seq_len=st.integers(1, 64),
    causal=st.booleans())


@st.composite
def valid_jobs(draw):
    program = draw(st.builds(spec.BuiltinProgram, MLPS | TRANSFORMERS, FILES)
                   | st.builds(spec.Pt2Program, FILES, FILES))
    train = None
    if isinstance(program, spec.BuiltinProgram) and draw(st.booleans()):
        transformer = program.family is spec.Family.TRANSFORMER
        train = spec.TrainSpec(
            draw(st.integers(1, 10_000)), draw(st.floats(1e-6, 10.0)),
            draw(st.sampled_from(spec.Optimizer)),
            spec.Loss.CROSS_ENTROPY if transformer else draw(st.sampled_from(spec.Loss)),
            draw(st.integers(0, 2**31 - 1)))
    gpu = draw(st.booleans())
    requirements = spec.Requirements(
        spec.Device.GPU if gpu else spec.Device.CPU,
        draw(st.integers(0, 1 << 24)) if gpu else 0,
        draw(st.none() | st.tuples(st.integers(1, 99), st.integers(0, 9))) if gpu else None,
        draw(st.floats(0.0, spec.MAX_TIMEOUT_S)), draw(st.integers(1024, 1 << 20)))
    return spec.JobSpec(
        draw(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)),
        draw(st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)), program, draw(FILES),
        spec.Mode.TRAIN if train else spec.Mode.FORWARD, train, requirements,
        draw(st.floats(1e-3, spec.MAX_TIMEOUT_S)), draw(st.integers(0, 8)),
        draw(st.integers(-100, 100)))


@settings(FUZZ, max_examples=20)  # from_regex is slow to generate; the fields are few
@given(valid_jobs())
def test_job_specs_round_trip(job):
    assert spec.decode_job(spec.encode_job(job)) == job


@FUZZ
@given(ft.valid_safetensors())
def test_safetensors_files_written_by_the_library_parse_to_their_tensors(pair):
    data, tensors = pair
    assert ft.read_safetensors(data) == tensors


def test_a_sanitised_archive_sanitises_to_the_same_program():
    clean = sanitise.sanitise_pt2(ft.PT2_SEED)
    assert (clean.input_names, clean.parameter_names) == (("x",), ("l1.weight", "l1.bias"))
    ft._check_pt2(ft.PT2_SEED, clean)


# ----------------------------------------------------------------------------- crashes found


def _seed_with_model(edit) -> bytes:
    members = dict(ft._SEED_MEMBERS)
    name = "fuzz_seed/models/model.json"
    doc = json.loads(members[name])
    edit(doc)
    members[name] = json.dumps(doc).encode()
    return ft.zip_of([(n, b, 0) for n, b in members.items()])


def _set(path: tuple, value):
    def edit(doc):
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


_X_SIZE = ("graph_module", "graph", "tensor_values", "x", "sizes", 0, "as_expr", "expr_str")
_IN_SPEC = ("graph_module", "module_call_graph", 0, "signature", "in_spec")


def _corrupt_deflate_stream() -> bytes:
    """The seed with model.json deflated and its compressed stream's first byte flipped."""
    import io
    import zipfile

    data = bytearray(ft.zip_of([(n, b, zipfile.ZIP_DEFLATED) for n, b in ft._SEED_MEMBERS.items()]))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("fuzz_seed/models/model.json")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra)] ^= 0xFF
    return bytes(data)


def _job(name: str, **changes) -> bytes:
    doc = json.loads(bytes.fromhex(ft.GOLDEN["jobs"][name]))
    for key, value in changes.items():
        *path, last = key.split(".")
        inner = doc
        for part in path:
            inner = inner[part]
        inner[last] = value
    return json.dumps(doc).encode()


REGRESSIONS = {
    # zlib.error escaped: a corrupt deflate stream is not an OSError.
    "pt2: corrupt deflate stream": ("pt2", _corrupt_deflate_stream()),
    # TypeError: a graph node's target used as a set key.
    "pt2: target is a list": ("pt2", _seed_with_model(
        _set(("graph_module", "graph", "nodes", 0, "target"), []))),
    # ValueError: Pow's exponent Integer('a1') passed to int().
    "pt2: Integer of a name": ("pt2", _seed_with_model(
        _set(_X_SIZE, "Pow(Symbol('s1'), Integer('a1'))"))),
    # UnicodeEncodeError: a pytree spec with a lone surrogate re-encoded to UTF-8.
    "pt2: surrogate in a pytree spec": ("pt2", _seed_with_model(_set(_IN_SPEC, "\ud800"))),
    # TypeError: an unhashable dtype looked up in the dtype table.
    "safetensors: dtype is a list": ("safetensors", ft.safetensors_file(
        {"a": {"dtype": [], "shape": [], "data_offsets": [0, 0]}}, 0)),
    # AttributeError: a claim body that is msgpack but not a map, then .get on an int.
    "receipt: claim body is an int": ("receipt", wire.encode(
        receipts.Receipt(b"\x01", b"", b"", b"", b""))),
    # ProtocolError (not ReceiptRejected): an int map key msgspec parses, msgpack refuses.
    "receipt: claim with an int key": ("receipt", wire.encode(
        receipts.Receipt(b"\x81\x01\x02", b"", b"", b"", b""))),
    # AssertionError: an envelope field beyond the schema gave a reason receipts did not list.
    "receipt: unknown envelope field": ("receipt", ft._pack(
        {**wire.unpack(bytes.fromhex(ft.GOLDEN["receipts"]["job"]["both"])), "extra": 1})),
    # OverflowError: float() of an integer JSON number past 1e308.
    "job: huge timeout": ("job_spec", _job("mlp_train", timeout_s=10**400)),
    "job: huge learning rate": ("job_spec", _job("mlp_train", **{"train.lr": -(10**400)})),
    # TypeError: a transformer config without its fields reached the constructor.
    "job: empty transformer config": ("job_spec", _job("transformer", **{"program.config": {}})),
}


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_crash_found_by_fuzzing_is_now_a_documented_refusal(case):
    name, data = REGRESSIONS[case]
    target = ft.targets()[name]
    with pytest.raises(target.errors):
        target.decode(data)


@pytest.mark.parametrize("record", [{"losses": [1 << 1100]}, {"timings": {"wall_s": 1 << 1100}}])
def test_a_result_record_with_numbers_past_float_range_is_refused(record):
    # OverflowError before: float() of an integer past 1e308. msgpack carries no such integer,
    # but the runner reads the worker's result.json, which the job's own process can write.
    golden = wire.decode(bytes.fromhex(ft.GOLDEN["result"]), job_protocol.Result).record
    with pytest.raises(spec.InvalidJob):
        spec.result_from_dict({**golden, **record})


def test_a_job_spec_version_must_be_an_integer():
    # True == 1 in Python: the version check accepted a boolean, which then re-encoded as true.
    for version in (True, 1.0):
        with pytest.raises(spec.InvalidJob, match="version"):
            spec.decode_job(_job("pt2", version=version))


def test_a_later_claim_version_is_still_told_apart():
    golden = wire.decode(bytes.fromhex(ft.GOLDEN["receipts"]["job"]["both"]), receipts.Receipt)
    raw = wire.unpack(golden.body)
    raw["version"] = 2
    with pytest.raises(receipts.ReceiptRejected) as caught:
        receipts.check_receipt(wire.encode(receipts.Receipt(ft._pack(raw), b"", b"", b"", b"")))
    assert caught.value.reason == "version"
    assert isinstance(caught.value, ProtocolError)
