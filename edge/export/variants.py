"""What ``fedge package`` can build: the variant names, parsed without torch (the command's help reads them too).

A *variant* is a model kind and a precision, written ``KIND-PRECISION``:

- kinds: the trained model itself (no prefix), ``pruned`` (global unstructured magnitude pruning, fine-tuned),
  ``channels`` (channel pruning that rebuilds smaller layers, fine-tuned), ``student`` (distilled);
- precisions: ``fp32``, ``int8`` (static: calibrated, QDQ in ONNX, full integer in TFLite), ``dynamic``
  (int8 weights, activations quantized at run time), ``fp16`` (TFLite only).

So ``int8`` is the trained model quantized, ``pruned-int8`` the pruned model quantized, ``student`` the student in
float32. Every variant is written in every asked format (a precision a format lacks is skipped with a note).

>>> parse_variant("pruned-int8")
Variant(name='pruned-int8', kind='pruned', precision='int8')
>>> precision_choices()
'fp32, fp16 (tflite only), dynamic, int8'
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.export.errors import UnknownFormatError

KINDS = ("base", "pruned", "channels", "student")
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
#: the precisions each format of :data:`edge.agent.protocol.FORMATS` is built in
FORMAT_PRECISIONS = {"onnx": ("fp32", "dynamic", "int8"), "tflite": ("fp32", "fp16", "dynamic", "int8")}
DEFAULT_VARIANTS = ("fp32", "int8", "pruned-int8", "channels-int8", "student", "student-int8")


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    precision: str


def parse_variant(name: str) -> Variant:
    """``int8`` -> (base, int8); ``pruned`` -> (pruned, fp32); ``student-int8`` -> (student, int8)."""
    text = name.strip().lower()
    choices = (
        f"a precision ({', '.join(PRECISIONS)}), a kind ({', '.join(KINDS[1:])}) or KIND-PRECISION such as pruned-int8"
    )
    if text in PRECISIONS:
        return Variant(text, "base", text)
    if text in KINDS[1:]:
        return Variant(f"{text}-fp32", text, "fp32")
    kind, _, precision = text.partition("-")
    if kind in KINDS[1:] and precision in PRECISIONS:
        return Variant(text, kind, precision)
    raise UnknownFormatError(f"unknown variant {name!r}; give {choices}")


def precision_choices() -> str:
    """The precisions, each marked with the formats it is limited to (for help texts)."""
    parts = []
    for precision in PRECISIONS:
        formats = [fmt for fmt, known in FORMAT_PRECISIONS.items() if precision in known]
        limited = len(formats) < len(FORMAT_PRECISIONS)
        parts.append(f"{precision} ({', '.join(formats)} only)" if limited else precision)
    return ", ".join(parts)
