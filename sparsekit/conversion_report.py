"""What :func:`sparsekit.convert` did: one :class:`LayerDecision` per layer, gathered in a
:class:`ConversionReport` that prints as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["LayerDecision", "ConversionReport"]


@dataclass
class LayerDecision:
    """What :func:`convert` did with one layer.

    ``format`` is "dense" (left as it was), "csr" or "bsr(r,c)". ``density`` counts the
    nonzero weights, ``stored_density`` the stored values (zeros inside kept blocks too).
    ``speedup`` maps each measured batch size (rows for linear layers, images for
    convolutions) to dense time / chosen time; ``None`` when nothing was measured
    (explicit formats). ``times_ms`` holds the measurements, ``{format: {batch: ms}}``.
    ``values`` is the stored value type ("float32", "int8", "int8 dynamic", "float16",
    "bfloat16") and ``error`` the relative RMS change of the layer's output it causes
    (None for float32).

    Example:
        >>> from sparsekit.conversion_report import LayerDecision
        >>> row = LayerDecision("fc", "Linear", (4, 8), "dense", 1.0, 1.0, 144, 144, reason="format='dense'")
        >>> row.format, row.bytes, row.speedup
        ('dense', 144, None)
    """

    name: str
    kind: str
    shape: Tuple[int, int]
    format: str
    density: float
    stored_density: float
    dense_bytes: int
    bytes: int
    index_dtype: Optional[str] = None
    activation: Optional[str] = None
    folded: Optional[str] = None
    speedup: Optional[Dict[int, float]] = None
    times_ms: Dict[str, Dict[int, float]] = field(default_factory=dict)
    reason: str = ""
    values: str = "float32"
    error: Optional[float] = None


class ConversionReport:
    """Per-layer decisions of :func:`sparsekit.convert` (attached as ``model.sparsekit_summary``).

    ``str(report)`` prints a table; ``report.to_dict()`` gives plain data; iterate for
    :class:`LayerDecision` rows; ``report["fc1"]`` looks one up by qualified name.

    Example:
        >>> import torch, sparsekit
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.mul_(torch.rand(8, 8) > 0.9)
        >>> out = sparsekit.convert(model, format="csr")
        >>> out.sparsekit_summary["0"].format
        'csr'
    """

    def __init__(self, rows: Sequence[LayerDecision], fused_sequentials: Sequence[str] = ()) -> None:
        self.rows: List[LayerDecision] = list(rows)
        #: Qualified names ("" for the model itself) of the ``nn.Sequential`` containers that
        #: became :class:`sparsekit.nn.SparseSequential` (consecutive sparse layers in one call).
        self.fused_sequentials: List[str] = list(fused_sequentials)

    def __iter__(self) -> Iterator[LayerDecision]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> LayerDecision:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def dense_bytes(self) -> int:
        """Weight+bias bytes of the considered layers before conversion."""
        return sum(r.dense_bytes for r in self.rows)

    @property
    def bytes(self) -> int:
        """Weight+bias bytes of the same layers after conversion."""
        return sum(r.bytes for r in self.rows)

    def to_dict(self) -> dict:
        """The report as plain data (lists, dicts, numbers, strings).

        Example:
            >>> from sparsekit.conversion_report import ConversionReport, LayerDecision
            >>> row = LayerDecision("fc", "Linear", (4, 8), "dense", 1.0, 1.0, 144, 144)
            >>> ConversionReport([row]).to_dict()["bytes"]
            144
        """
        return {"layers": [asdict(r) for r in self.rows], "dense_bytes": self.dense_bytes,
                "bytes": self.bytes, "fused_sequentials": list(self.fused_sequentials)}

    def __str__(self) -> str:
        # The values and error columns appear only when some layer is quantized.
        quantized = any(r.values != "float32" for r in self.rows)
        head = ("layer", "type", "shape", "format", "density", "KiB dense", "KiB now", "fused", "speedup")
        head += ("values", "error", "note") if quantized else ("note",)
        lines = []
        for r in self.rows:
            sp = "-" if not r.speedup else " ".join(f"b{b}:{v:.2f}x" for b, v in sorted(r.speedup.items()))
            fused = "+".join(x for x in (r.folded, r.activation) if x) or "-"
            line = (r.name or "<root>", r.kind, f"{r.shape[0]}x{r.shape[1]}", r.format,
                    f"{r.density:.3f}", f"{r.dense_bytes / 1024:.1f}", f"{r.bytes / 1024:.1f}", fused, sp)
            if quantized:
                line += (r.values, "-" if r.error is None else f"{r.error:.1e}")
            lines.append(line + (r.reason,))
        widths = [max(len(h), *(len(str(line[i])) for line in lines)) if lines else len(h)
                  for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        out.append(f"total: {self.dense_bytes / 1024:.1f} KiB dense -> {self.bytes / 1024:.1f} KiB")
        if self.fused_sequentials:
            names = ", ".join(repr(n or "<root>") for n in self.fused_sequentials)
            out.append(f"one call per stretch of consecutive sparse linear layers in: {names}")
        return "\n".join(out)

    def __repr__(self) -> str:
        n_sparse = sum(r.format != "dense" for r in self.rows)
        return f"ConversionReport({len(self.rows)} layers, {n_sparse} sparse, {self.dense_bytes} -> {self.bytes} bytes)"
