"""From bars to a gated, ONNX-exported model: features, splits, the Trainer protocol
(``base``) and its name table (``table``), backends, the pipeline and its typed
metadata. Knows nothing of Kafka, the registry or the daemon."""
