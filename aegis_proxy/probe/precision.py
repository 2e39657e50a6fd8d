"""Numeric precision of the backbone's matrix products: fp32, bf16 or int8, chosen per machine and per head card.

- `fp32`: everything in float32 (what the committed heads were trained on).
- `bf16`: the linear layers' weights cast to bfloat16 once at load, their inputs cast on the way in; attention runs
  on their bfloat16 outputs. The residual stream, the embeddings and every layer norm stay float32, so rounding does
  not accumulate from layer to layer. Fast only where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX);
  elsewhere oneDNN emulates it and it is slower than fp32. On a GPU it is the usual choice.
- `int8`: the linear layers' weights quantised per output channel once at load and pre-packed (fbgemm/x86); the
  activations are quantised per call (dynamic quantisation); everything else float32. CPU only.

`auto` takes, among the precisions this machine runs well, the fastest that every loaded head's card validates
(`aegis probe check-precision` measures a precision against the one a head was trained with and records it on the
card). A precision that the heads do not validate is never used silently: asked for explicitly, it is a ProbeError;
under `auto` the next one is taken and the scorer reports which precision runs.

torch is imported only inside functions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_proxy.probe.errors import ProbeError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
COMPUTE_PRECISIONS = ("fp32", "bf16", "int8")  # what a model actually runs
PRECISIONS = (AUTO, *COMPUTE_PRECISIONS)  # what a user may ask for
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # native bfloat16 dot products
INT8_FLAGS = frozenset({"avx2"})  # fbgemm's minimum
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # int8 dot products without 16-bit saturation
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where that file does not exist (then `auto` means fp32)."""
    try:
        text = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def check_requested(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ProbeError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}",
            hint="give --precision auto, fp32, bf16 or int8",
        )


def int8_engine() -> str | None:
    """The quantised-linear engine torch offers on this machine, or None (int8 cannot run)."""
    import torch

    engines = torch.backends.quantized.supported_engines
    if not INT8_FLAGS & cpu_flags():
        return None
    return next((name for name in ("x86", "fbgemm") if name in engines), None)


def fast_precisions(device: str) -> tuple[str, ...]:
    """The precisions this machine runs well, fastest first (fp32 always last: it runs everywhere)."""
    if device == "cuda":
        return ("bf16", "fp32")
    fast: list[str] = []
    if BF16_FLAGS & cpu_flags():
        fast.append("bf16")
    if int8_engine() is not None:
        fast.append("int8")
    return (*fast, "fp32")


def choose(
    requested: str,
    device: str,
    validated: Iterable[str] | None = None,
    implemented: Iterable[str] = COMPUTE_PRECISIONS,
) -> str:
    """The precision to run. `validated`: the precisions every head accepts (None: no heads to satisfy);
    `implemented`: those the model has a forward pass for.

    An explicit precision the device or model cannot run, or that a head does not validate, is a ProbeError: running
    it anyway would change the scores without anyone having measured by how much."""
    check_requested(requested)
    allowed = None if validated is None else set(validated)
    implemented = tuple(implemented)
    if requested == AUTO:
        for precision in fast_precisions(device):
            if precision in implemented and (allowed is None or precision in allowed):
                return precision
        raise ProbeError(
            f"the heads validate only {', '.join(sorted(allowed or ()))}, which this machine or model cannot run",
            hint="run `aegis probe check-precision` for a precision this machine runs, or retrain the heads",
        )
    if requested not in implemented:
        raise ProbeError(
            f"precision {requested} is not implemented for this backbone on {device} "
            f"(it runs {', '.join(implemented)})",
            hint="use --precision auto",
        )
    if requested == "int8":
        if device != "cpu":
            raise ProbeError("precision int8 runs on the CPU only", hint="use --precision bf16 on a GPU")
        if int8_engine() is None:
            raise ProbeError(
                "precision int8 needs an x86 CPU with AVX2 and torch's fbgemm/x86 quantised engine",
                hint="use --precision fp32 or auto",
            )
    if allowed is not None and requested not in allowed:
        raise ProbeError(
            f"precision {requested} is not validated by the heads (they accept {', '.join(sorted(allowed))})",
            hint=f"run `aegis probe check-precision --precision {requested}` to measure it, or use --precision auto",
        )
    return requested


class Linear:
    """y = x W^T + b at a precision, with the weights prepared once (cast, or quantised and packed)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, precision: str) -> None:
        import torch

        self.precision = precision
        self._packed: Any = None
        if precision == "fp32":
            self.weight, self.bias = weight.float().contiguous(), bias.float().contiguous()
            self._dtype = torch.float32
        elif precision == "bf16":
            self.weight, self.bias = weight.to(torch.bfloat16).contiguous(), bias.to(torch.bfloat16).contiguous()
            self._dtype = torch.bfloat16
        elif precision == "int8":
            self.weight, self.bias = weight.float(), bias.float()
            self._packed = _pack_int8(self.weight, self.bias)
            # Without VNNI, fbgemm's 8-bit products saturate in 16 bits unless activations use 7 bits.
            self._reduce_range = not (VNNI_FLAGS & cpu_flags())
            self._dtype = torch.float32
        else:
            raise ProbeError(f"precision {precision!r} is not one of {', '.join(COMPUTE_PRECISIONS)}", hint="fp32")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, self._reduce_range)
        return torch.nn.functional.linear(x.to(self._dtype), self.weight, self.bias)


def _pack_int8(weight: torch.Tensor, bias: torch.Tensor) -> Any:
    """Symmetric per-output-channel int8 weights, pre-packed for torch.ops.quantized.linear_dynamic."""
    import torch

    scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-8).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantised tensor creation deprecated; its packed dynamic linear has no other entry point.
        warnings.simplefilter("ignore", UserWarning)
        quantised = torch.quantize_per_channel(weight.cpu(), scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantised, bias.cpu())
