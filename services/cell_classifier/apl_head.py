"""The per-cell APL head (issue 10): ``embedding`` [batch, 256] -> ``apl_logit`` [batch], run in the
same batch right after the CNN, on the embeddings the CNN's one run gave (no second pass over images).

The cell card's ``apl_cell_head`` section names the file, its sha256 and the sha256 of the float CNN
whose embeddings it was trained on; both are checked at load, like the CNN's own file, on the
bytes the session is then made from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.cell_classifier.errors import ModelIntegrityError

CARD_SECTION = "apl_cell_head"


class AplCellHead:
    def __init__(self, model_dir: Path, section: dict, float_cnn_sha256: str):
        path = model_dir / section["file"]
        data = path.read_bytes()  # hashed and loaded from memory: the session runs exactly the bytes checked
        actual = hashlib.sha256(data).hexdigest()
        if actual != section["sha256"]:
            raise ModelIntegrityError(f"{path} has sha256 {actual}, the card's apl_cell_head says {section['sha256']}")
        if section.get("cell_model_sha256") != float_cnn_sha256:
            raise ModelIntegrityError(
                f"the APL cell head was trained on the cell model with sha256 {section.get('cell_model_sha256')}, "
                f"the card's float model is {float_cnn_sha256}: train the head again for this cell model")
        self.name: str = section["name"]
        self.version: str = section["version"]
        self.sha256: str = actual
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a 256x1 matmul: threads would only cost
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # on the CPU whatever the CNN runs on: the embeddings come back to the host anyway, and a 256x1
        # matmul costs less than a copy to the GPU and a kernel launch
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input_name: str = section.get("input", "embedding")
        self.output_name: str = section.get("output", "apl_logit")
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.input_name not in inputs or self.output_name not in outputs:
            raise ModelIntegrityError(f"{path.name} has inputs {inputs} and outputs {outputs}, the card names "
                                        f"{self.input_name!r} -> {self.output_name!r}")

    @property
    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, 256) float32 -> (n,) float32 per-cell APL log-odds."""
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(embeddings,
                                                                                         dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(embeddings))
