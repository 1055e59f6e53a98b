"""What the benchmark scripts share: config loading, library versions, one float32-matmul setting, and what
a compiled step holds (compiled_step_summary: XLA's memory and cost analysis, the optimised HLO's buffers).

TF32 is the one numeric setting that differs between the frameworks' defaults (JAX lets XLA use
TF32 for float32 matmuls on NVIDIA GPUs, PyTorch does not), so every script sets it explicitly and
reports it: --matmul_precision tf32 (both sides may use TF32) or highest (both full float32).
bf16 matmuls are unaffected either way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MATMUL_PRECISIONS = ("tf32", "highest")


def load_config(path: str | Path):
    """get_config() of a config file (configs/base.py, ...)."""
    spec = importlib.util.spec_from_file_location("bench_config", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (and Python); "absent" for missing ones."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def torch_masked_attention(q, k, v, keep):
    """torch's scaled_dot_product_attention on (batch, L, heads, d) tensors, keys where `keep` (batch, L) is
    False masked out: the torch side of the CPU attention benchmarks (encoder_parts.py, attention_cpu.py)."""
    import torch

    bias = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)[:, None, None, :]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2)


def set_jax_matmul_precision(precision: str) -> None:
    import jax

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if precision == "tf32" else "highest")


def set_torch_matmul_precision(precision: str) -> None:
    import torch

    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


def random_model_export(config_path: str | Path, out_dir: Path) -> Path:
    """A randomly initialised model of a config, exported (HF layout) to out_dir/export: a model of that shape
    for benchmarks that do not depend on the weights."""
    import jax

    from dnavec_jax import export
    from dnavec_jax.model import init_params
    from dnavec_jax.training import settings

    config = load_config(config_path)
    model_config = settings.model_config_from(config)
    prep = config.data.prep
    tokenizer = export.tokenizer_from_train_config(config.to_dict())
    params = jax.device_get(init_params(model_config, jax.random.key(0)))
    return export.export_to_hf(params, model_config, tokenizer, out_dir / "export",
                                  train_config={"data": {"prep": {"k_min": prep.k_min, "k_max": prep.k_max,
                                                                  "seq_length": prep.seq_length}}})


# ---- what a compiled step holds -------------------------------------------------------------------------
# Control-flow attributes whose computations run as top-level code (their instructions write to memory);
# computations named by calls= (fusion bodies, wrapped ops) and to_apply= (reducers) run inside one kernel.
_CONTROL_FLOW = re.compile(r"\b(?:body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


def _split_shape(rest: str) -> tuple[str, str]:
    """(shape text, the text after it) of an instruction's right-hand side; a tuple shape, "(f32[..], ..)",
    may hold spaces and nested tuples."""
    if not rest.startswith("("):
        shape, _, after = rest.partition(" ")
        return shape, after
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:index + 1], rest[index + 1:].lstrip()
    return rest, ""


def hlo_instructions(hlo: str) -> list[tuple[str, list[tuple[str, tuple[int, ...]]], str, str]]:
    """(name, output arrays [(dtype, dims)], op, line) of every instruction of an optimised HLO module that
    runs outside a fused kernel: the entry computation and the control flow it reaches (while bodies,
    conditional branches), never fusion bodies or reducers."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            current = line.split(" (", 1)[0].removeprefix("ENTRY ").lstrip("%").strip()
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.strip() and line.strip() != "}":
            computations[current].append(line)
    found, seen, pending = [], set(), [entry] if entry else []
    while pending:
        name = pending.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for line in computations[name]:
            pending += _CONTROL_FLOW.findall(line)
            for branches in _BRANCHES.findall(line):
                pending += [branch.strip().lstrip("%") for branch in branches.split(",")]
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            shape, after = _split_shape(match.group(2))
            arrays = [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape)]
            found.append((match.group(1), arrays, after.split("(", 1)[0].strip(), line))
    return found


def compiled_step_summary(compiled, vocab_sizes: set[int], big_elements: int) -> dict:
    """What a compiled step holds, from XLA: its memory analysis (GiB), cost analysis, and the optimised
    HLO outside fused kernels (the arrays that reach memory): fusions by kind, custom calls by target
    (cuDNN attention, cuBLAS), scatters, and float32 arrays of at least big_elements elements with a
    vocabulary-sized dimension, tuple-shaped outputs included (where a float32 logits copy would sit)."""
    summary: dict = {}
    try:
        memory = compiled.memory_analysis()
        summary["memory_gib"] = {name: round(getattr(memory, f"{name}_size_in_bytes") / 2**30, 3)
                                 for name in ("argument", "output", "alias", "temp", "generated_code")}
    except Exception as error:  # not every backend has it
        summary["memory_gib"] = f"unavailable: {type(error).__name__}"
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        summary.update(gflops=round(cost.get("flops", 0) / 1e9, 1),
                       gbytes_accessed=round(cost.get("bytes accessed", 0) / 1e9, 2))
    except Exception as error:
        summary["cost"] = f"unavailable: {type(error).__name__}"
    hlo = compiled.as_text()
    fused_bodies = {name: body for name, body in re.findall(r"(?ms)^%?([\w.\-]+) \(.*?\{\n(.*?)^\}", hlo)}
    kinds, targets, scatters, big_f32 = Counter(), Counter(), Counter(), Counter()
    instructions = hlo_instructions(hlo)
    for _, arrays, op, line in instructions:
        if op in ("parameter", "bitcast", "get-tuple-element", "tuple", "constant"):
            continue
        if op == "fusion":
            kinds[(re.search(r"kind=(\w+)", line) or [None, "?"])[1]] += 1
            called = (re.search(r"calls=%?([\w.\-]+)", line) or [None, ""])[1]
            if re.search(r"= \S+ scatter\(", fused_bodies.get(called, "")):
                scatters[" ".join(f"{d}[{','.join(map(str, s))}]" for d, s in arrays)] += 1
        elif op == "scatter":
            scatters[" ".join(f"{d}[{','.join(map(str, s))}]" for d, s in arrays)] += 1
        if op == "custom-call":
            targets[(re.search(r'custom_call_target="([^"]+)"', line) or [None, "?"])[1]] += 1
        for dtype, dims in arrays:
            size = 1
            for d in dims:
                size *= d
            if dtype == "f32" and set(dims) & vocab_sizes and size >= big_elements:
                big_f32[f"{op} f32[{','.join(map(str, dims))}]"] += 1
    summary.update(instructions=len(instructions), fusions=dict(kinds), custom_calls=dict(targets),
                   scatters=dict(scatters), vocab_f32_buffers=dict(big_f32),
                   rng_ops=dict(Counter(op for _, _, op, _ in instructions if op in ("rng-bit-generator", "rng"))))
    return summary
