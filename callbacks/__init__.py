"""Lightning callbacks: quantization-aware training (ECQ, ECQx, EC2T), NNC export, rate–distortion report.

See :mod:`ecqx.callbacks._base` for how the shadow weights and the user's optimizer interact.
"""

from ecqx.callbacks._base import QuantizationCallback, find_quantization_callback
from ecqx.callbacks.ec2t import EC2T
from ecqx.callbacks.ecq import ECQ, ECQx
from ecqx.callbacks.nnc_export import ExportResult, NNCExport
from ecqx.callbacks.nnc_updates import NNCUpdates
from ecqx.callbacks.rate_distortion import RateDistortion, plot_rate_distortion

__all__ = [
    "ECQ",
    "ECQx",
    "EC2T",
    "NNCExport",
    "NNCUpdates",
    "RateDistortion",
    "ExportResult",
    "QuantizationCallback",
    "find_quantization_callback",
    "plot_rate_distortion",
]
