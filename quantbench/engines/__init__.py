"""Engines: what runs a quantized model. `protocol.QuantizedModel` is all the evals see; `torch_model.TorchModel`
serves every library that yields a torch module. Ground layer: imports nothing above it."""
