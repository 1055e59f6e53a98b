"""The GPU suite's own logic, on the CPU: the HLO reading of a compiled step, the preflight, torch's halving."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def load_script(name: str, monkeypatch):
    """A benchmarks/ script as a module (they import their neighbour common.py by name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HLO = """\
HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_computation.3 (param_0: bf16[8,77,87424]) -> (f32[8,77,87424], bf16[8,77,87424]) {
  %param_0 = bf16[8,77,87424]{2,1,0} parameter(0)
  %inner = f32[8,77,87424]{2,1,0} convert(%param_0)
  ROOT %t = (f32[8,77,87424]{2,1,0}, bf16[8,77,87424]{2,1,0}) tuple(%inner, %param_0)
}

%scatter_body (p: f32[512,512]) -> f32[512,512] {
  %p = f32[512,512]{1,0} parameter(0)
  ROOT %s = f32[512,512]{1,0} scatter(%p, %p, %p), to_apply=%add
}

%while_body (state: (s32[], f32[8,77,87424])) -> (s32[], f32[8,77,87424]) {
  %state = (s32[], f32[8,77,87424]{2,1,0}) parameter(0)
  %exp.9 = f32[8,77,87424]{2,1,0} exponential(%gte)
  ROOT %r = (s32[], f32[8,77,87424]{2,1,0}) tuple(%i, %exp.9)
}

ENTRY %main (x: bf16[8,77,87424]) -> f32[] {
  %x = bf16[8,77,87424]{2,1,0} parameter(0)
  %fusion.3 = (f32[8,77,87424]{2,1,0}, bf16[8,77,87424]{2,1,0}) fusion(%x), kind=kLoop, calls=%fused_computation.3
  %small = f32[8,77]{1,0} fusion(%x), kind=kInput, calls=%fused_computation.3
  %scatter_fusion = f32[512,512]{1,0} fusion(%w), kind=kLoop, calls=%scatter_body
  %attention = (bf16[8,512,8,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"
  %loop = (s32[], f32[8,77,87424]{2,1,0}) while(%init), condition=%cond, body=%while_body
  ROOT %out = f32[] constant(0)
}
"""


def test_the_step_summary_reads_tuple_shaped_fusions_and_control_flow_but_not_fused_bodies(monkeypatch):
    common = load_script("common", monkeypatch)

    class Compiled:
        def as_text(self):
            return HLO

    summary = common.compiled_step_summary(Compiled(), {87424}, 8 * 77 * 87365)
    # The fusion's tuple output holds a float32 logits-sized array (the old single-shape regex missed it);
    # the while body's exponential runs at top level too; the convert inside the fusion body does not count.
    assert summary["vocab_f32_buffers"] == {"fusion f32[8,77,87424]": 1, "exponential f32[8,77,87424]": 1,
                                            "while f32[8,77,87424]": 1}
    assert summary["fusions"] == {"kLoop": 2, "kInput": 1}
    assert summary["scatters"] == {"f32[512,512]": 1}
    assert summary["custom_calls"] == {"__cudnn$fmhaSoftmax": 1}
    assert "unavailable" in summary["memory_gib"]  # this stand-in has no memory analysis: said, not a crash


def test_preflight_turns_a_missing_module_into_a_row(monkeypatch, capsys):
    preflight = load_script("preflight", monkeypatch)
    # Three of its modules (importing all of them, torch included, is the suite's time, not the test's).
    monkeypatch.setattr(preflight, "NEEDED", {"numpy": "all", "ml_collections": "all rows",
                                              "dnavec_no_such_module": "a row of the suite"})
    monkeypatch.setitem(sys.modules, "ml_collections", None)  # as on the device image without the wheel
    preflight.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    missing = {row["module"]: row for row in rows if row["check"] == "missing"}
    assert set(missing) == {"dnavec_no_such_module", "ml_collections"}
    assert "pip download" in missing["ml_collections"]["fix"] and missing["ml_collections"]["needed_by"]
    wheels = next(row for row in rows if row["check"] == "wheels")
    assert wheels["ok"] is False
    assert {"versions", "devices"} <= {row["check"] for row in rows}


def test_torch_rows_halve_the_batch_until_it_fits_and_say_so(monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    script = load_script("torch_mlm_throughput", monkeypatch)
    tried = []

    def measure(args, config, model_config, device, head, batch):
        tried.append((head, batch))
        if head == "full" and batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"head": head, "batch_size": batch}

    monkeypatch.setattr(script, "measure", measure)
    monkeypatch.setattr(sys, "argv", ["x", "--config", str(REPO / "configs" / "tiny.py"), "--batch_size", "8",
                                      "--head", "masked,full"])
    script.main()
    masked, full = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert masked == {"head": "masked", "batch_size": 8}
    assert full == {"head": "full", "batch_size": 2, "requested_batch_size": 8,
                    "halved": ["8: out of memory", "4: out of memory"]}
    assert tried == [("masked", 8), ("full", 8), ("full", 4), ("full", 2)]
