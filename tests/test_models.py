"""Built-in families, their config validation and the job spec's wire codec (in-process)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from safetensors.torch import save

from poolai.node.jobs.models import build_model, forward, load_weights, train_steps
from poolai.node.jobs.sanitise import parse_safetensors_header, safetensors_header_length, sanitise_pt2
from poolai.node.jobs.spec import (
    Activation,
    BuiltinProgram,
    Device,
    FileRef,
    InvalidJob,
    JobResult,
    JobSpec,
    JobStatus,
    Loss,
    MLPConfig,
    Mode,
    Optimizer,
    Pt2Program,
    Requirements,
    Timings,
    TrainSpec,
    TransformerConfig,
    check_tensors,
    decode_job,
    encode_job,
    input_signature,
    job_from_dict,
    job_to_dict,
    parameter_count,
    result_from_dict,
    result_to_dict,
    weight_signature,
)

SHA = "0" * 64
MLP = MLPConfig(in_features=8, hidden=(16, 16), out_features=3, activation=Activation.GELU)
GPT = TransformerConfig(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=12)


def header_of(tensors: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    data = save(tensors)
    n = safetensors_header_length(data[:8])
    return parse_safetensors_header(data[8:8 + n], len(data))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("kwargs, message", [
    ({"in_features": 0}, "in_features=0"),
    ({"in_features": True}, "in_features must be an integer"),
    ({"hidden": [4]}, "hidden must be a tuple"),
    ({"hidden": (4,) * 17}, "at most 16"),
    ({"hidden": (65536, 65536)}, "too many parameters"),
    ({"out_features": 1.5}, "out_features must be an integer"),
])
def test_bad_mlp_config_is_refused(kwargs, message) -> None:
    base = {"in_features": 8, "hidden": (16,), "out_features": 3}
    with pytest.raises(InvalidJob, match=message):
        MLPConfig(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"d_model": 30}, "multiple of n_heads"),
    ({"n_layers": 25}, r"n_layers=25 is outside \[1, 24\]"),
    ({"vocab_size": 1}, "vocab_size=1"),
    ({"causal": 1}, "causal must be a boolean"),
    ({"d_model": 2048, "n_layers": 24, "d_ff": 8192, "vocab_size": 65536}, "too many parameters"),
])
def test_bad_transformer_config_is_refused(kwargs, message) -> None:
    base = dict(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=12)
    with pytest.raises(InvalidJob, match=message):
        TransformerConfig(**{**base, **kwargs})


@pytest.mark.parametrize("config", [MLP, MLPConfig(4, (), 2), GPT,
                                    TransformerConfig(50, 16, 1, 1, 8, 4, causal=False)])
def test_weight_signature_matches_the_module(config) -> None:
    state = build_model(config).state_dict()
    signature = weight_signature(config)
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {k: spec.shape for k, spec in signature.tensors.items()}
    assert parameter_count(config) == sum(v.numel() for v in state.values())


def test_check_tensors_binds_free_dimensions() -> None:
    sig = input_signature(MLP, Mode.TRAIN, Loss.MSE)
    good = header_of({"x": torch.zeros(5, 8), "target": torch.zeros(5, 3)})
    assert check_tensors(good, sig, "inputs") == {"batch": 5}
    cases = [
        ({"x": torch.zeros(5, 8)}, "missing tensors"),
        ({"x": torch.zeros(5, 8), "target": torch.zeros(4, 3)}, "dimension batch is 5"),
        ({"x": torch.zeros(5, 9), "target": torch.zeros(5, 3)}, "expected"),
        ({"x": torch.zeros(5, 8, dtype=torch.float64), "target": torch.zeros(5, 3)}, "dtype F64"),
        ({"x": torch.zeros(5, 8), "target": torch.zeros(5, 3), "y": torch.zeros(1)}, "unexpected"),
    ]
    for tensors, message in cases:
        with pytest.raises(InvalidJob, match=message):
            check_tensors(header_of(tensors), sig, "inputs")
    seq = input_signature(GPT, Mode.FORWARD)
    with pytest.raises(InvalidJob, match=r"seq=13 is outside \[1, 12\]"):
        check_tensors(header_of({"tokens": torch.zeros(2, 13, dtype=torch.int64)}), seq, "inputs")


def test_safetensors_header_parser_refuses_inconsistent_headers() -> None:
    data = save({"w": torch.zeros(2, 3)})
    n = safetensors_header_length(data[:8])
    header = json.loads(data[8:8 + n])
    assert parse_safetensors_header(data[8:8 + n], len(data))["w"].shape == (2, 3)
    for patch, message in [
        ({"shape": [2, 4]}, "span does not match"),
        ({"data_offsets": [0, 4096]}, "outside the file"),
        ({"dtype": "F128"}, "unsupported dtype"),
        ({"shape": [-1, 3]}, "bad shape"),
    ]:
        bad = json.dumps({"w": {**header["w"], **patch}}).encode()
        with pytest.raises(InvalidJob, match=message):
            parse_safetensors_header(bad, 8 + len(bad) + 24)  # 24 bytes of data, as before
    with pytest.raises(InvalidJob, match="too large"):
        safetensors_header_length((1 << 40).to_bytes(8, "little"))


# ----------------------------------------------------------------------------- the wire codec


def a_job(**changes) -> JobSpec:  # type: ignore[no-untyped-def]
    fields = dict(
        job_id="job-1", submitter="peer1", inputs=FileRef("in.safetensors", SHA, 10),
        program=BuiltinProgram(MLP, FileRef("w.safetensors", SHA, 100)),
        mode=Mode.TRAIN, train=TrainSpec(steps=3, lr=0.1, optimizer=Optimizer.ADAM),
        requirements=Requirements(Device.GPU, 4096, (8, 0), 2.5, 1024),
        timeout_s=30.0, retry_budget=2, priority=5)
    return JobSpec(**{**fields, **changes})


def test_job_round_trips_through_the_wire_form() -> None:
    for job in (a_job(), a_job(program=Pt2Program(FileRef("m.pt2", SHA, 5),
                                                  FileRef("w.safetensors", SHA, 1)),
                               mode=Mode.FORWARD, train=None)):
        assert decode_job(encode_job(job)) == job
    wire = job_to_dict(a_job())
    assert wire["program"]["kind"] == "builtin" and wire["program"]["family"] == "mlp"
    assert wire["requirements"]["min_compute_capability"] == [8, 0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(colour="red"), r"job has unknown keys \['colour'\]"),
    (lambda d: d["program"]["config"].update(in_features=-3), "in_features=-3"),
    (lambda d: d["program"]["config"].update(activation="softsign"), "activation must be one of"),
    (lambda d: d["program"].update(kind="script"), "program.kind must be"),
    (lambda d: d["inputs"].update(name="../etc/passwd"), "not a plain file name"),
    (lambda d: d.update(timeout_s=float("nan")), "timeout_s"),
    (lambda d: d.update(train=None), "train settings are required"),
    (lambda d: d["requirements"].update(device="cpu"), "GPU requirements given for a CPU job"),
    (lambda d: d.update(version=2), "unsupported job spec version"),
    (lambda d: d.pop("submitter"), "job.submitter is missing"),
])
def test_bad_wire_job_is_refused_with_a_clear_error(edit, message) -> None:
    wire = job_to_dict(a_job())
    edit(wire)
    with pytest.raises(InvalidJob, match=message):
        job_from_dict(wire)


def test_pt2_and_transformer_train_rules() -> None:
    pt2 = Pt2Program(FileRef("m.pt2", SHA, 5), FileRef("w.safetensors", SHA, 1))
    with pytest.raises(InvalidJob, match="only offered for built-in"):
        a_job(program=pt2)
    with pytest.raises(InvalidJob, match="next-token cross_entropy"):
        a_job(program=BuiltinProgram(GPT, FileRef("w.safetensors", SHA, 1)))
    with pytest.raises(InvalidJob, match="not JSON"):
        decode_job(b"{")
    with pytest.raises(InvalidJob, match="too large"):
        decode_job(b" " * 70_000)


def test_result_record_round_trips() -> None:
    result = JobResult("job-1", JobStatus.OK, FileRef("output.safetensors", SHA, 7),
                       Timings(1.0, 0.5, 0.25, 0.125), 1 << 20, "cpu", "", (2.0, 1.5))
    assert result_from_dict(json.loads(json.dumps(result_to_dict(result)))) == result
    with pytest.raises(InvalidJob):
        result_from_dict({"job_id": "j", "status": "exploded"})


# ----------------------------------------------------------------------------- the models


def test_mlp_forward_and_strict_weights() -> None:
    torch.manual_seed(1)
    model = build_model(MLP)
    x = torch.randn(6, 8)
    ref = model.layers[2](torch.nn.functional.gelu(
        model.layers[1](torch.nn.functional.gelu(model.layers[0](x)))))
    assert torch.allclose(forward(model, MLP, {"x": x})["y"], ref, atol=1e-6)
    other = build_model(MLP)
    load_weights(other, model.state_dict())
    assert torch.equal(forward(other, MLP, {"x": x})["y"], forward(model, MLP, {"x": x})["y"])
    state = dict(model.state_dict())
    state.pop("layers.2.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(other, state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(build_model(MLPConfig(8, (16, 16), 4)), model.state_dict())


def test_transformer_is_causal_and_the_encoder_is_not() -> None:
    torch.manual_seed(2)
    tokens = torch.randint(0, GPT.vocab_size, (2, 10))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % GPT.vocab_size
    for causal in (True, False):
        config = TransformerConfig(40, 32, 4, 2, 64, 12, causal=causal)
        model = build_model(config)
        a = forward(model, config, {"tokens": tokens})["logits"]
        b = forward(model, config, {"tokens": changed})["logits"]
        assert a.shape == (2, 10, 40)
        assert torch.equal(a[:, :7], b[:, :7]) == causal  # earlier positions never see later ones
    with pytest.raises(InvalidJob, match=r"tokens must lie in \[0, 40\)"):
        forward(model, config, {"tokens": torch.full((1, 3), 40)})


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 8)
    mlp = build_model(MLP)
    weights, losses = train_steps(mlp, MLP, TrainSpec(20, 0.01, Optimizer.ADAM),
                                  {"x": x, "target": x[:, :3] * 2})
    assert len(losses) == 20 and losses[-1] < losses[0] / 2
    assert set(weights) == set(weight_signature(MLP).tensors)
    gpt = build_model(GPT)
    tokens = torch.arange(12).repeat(4, 1) % GPT.vocab_size
    _, losses = train_steps(gpt, GPT, TrainSpec(10, 0.01, Optimizer.ADAM, Loss.CROSS_ENTROPY),
                            {"tokens": tokens})
    assert losses[0] > math.log(GPT.vocab_size) / 2 and losses[-1] < losses[0] / 2


def test_builtin_families_export_through_the_sanitiser() -> None:
    """Our own families, exported with dynamic shapes, pass the op allow-list unchanged."""
    torch.manual_seed(4)
    model = build_model(GPT).eval()
    dims = {"tokens": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=12)}}
    ep = torch.export.export(model, (torch.randint(0, 40, (2, 5)),), dynamic_shapes=dims)
    tokens = torch.randint(0, 40, (3, 9))
    for program in (ep, ep.run_decompositions()):  # as exported, and in core ATen ops
        buf = io.BytesIO()
        torch.export.save(program, buf)
        clean = sanitise_pt2(buf.getvalue())
        loaded = torch.export.load(io.BytesIO(clean.archive)).module()
        with torch.inference_mode():
            assert torch.allclose(loaded(tokens), model(tokens), atol=1e-5)
    assert "torch.ops.aten.bmm.default" in clean.ops  # the decomposed attention
