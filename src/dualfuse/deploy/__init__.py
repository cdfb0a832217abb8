"""Deployment: a trained model out of Python (export) and behind HTTP (serve).

    export.export_model(path, format, output)   ONNX / TorchScript / bundle, parity-checked on real images
    serve.create_app(path) / serve.run_server   FastAPI app: /predict, /explain, /healthz, /metadata, the page

Submodules are imported where used: the exporter needs onnx/onnxruntime, the server FastAPI.
"""
