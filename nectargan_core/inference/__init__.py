"""Running a trained generator: loading it (checkpoint, registry download or ONNX), example strips,
evaluation, prediction over folders and ONNX export."""
