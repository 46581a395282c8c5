"""From simulated to real sparsity: what a user deploys after training with masks.

- :mod:`.compress`: the compressed checkpoint (bit-packed masks, active values only), loaded back
  bit-exactly by :func:`load_compressed`.
- :mod:`.inference`: the inference model, plain PyTorch modules (torch.fx graph): dead neurons
  removed, batch norm folded (:mod:`.passes`), sparse layers in the form that times fastest
  (:mod:`.formats`: CSR :mod:`.csr`, condensed / ELL / embedding bag :mod:`.condensed`, BSR and
  semi-structured 2:4 :mod:`.structured`); :mod:`.graph` holds the fx helpers they share.
- :mod:`.artifacts`: run directory → masked model → export directory (``regrow export``).
- :mod:`.bench`: dense vs masked vs exported latency, side by side (``regrow bench-inference``).

::

    from regrow.export import export_model, load_compressed
    inference_model, report = export_model(masked_model, input_shape=(64,), batch_size=1)
"""

from .artifacts import (
    COMPRESSED,
    INFO,
    MODEL,
    MaskedModel,
    build_masked_model,
    export_run,
    load_export,
    load_run,
    random_masked_model,
)
from .bench import format_table, measure, three_models
from .compress import (
    compress_state_dict,
    decompress_state_dict,
    dense_weights,
    load_compressed,
    pack_bits,
    save_compressed,
    size_report,
    unpack_bits,
)
from .formats import FORMAT_MODES
from .inference import ExportReport, LayerReport, export_model, strip_masks

__all__ = [
    "COMPRESSED",
    "FORMAT_MODES",
    "INFO",
    "MODEL",
    "ExportReport",
    "LayerReport",
    "MaskedModel",
    "build_masked_model",
    "compress_state_dict",
    "decompress_state_dict",
    "dense_weights",
    "export_model",
    "export_run",
    "format_table",
    "load_compressed",
    "load_export",
    "load_run",
    "measure",
    "pack_bits",
    "random_masked_model",
    "save_compressed",
    "size_report",
    "strip_masks",
    "three_models",
    "unpack_bits",
]
