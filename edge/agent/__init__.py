"""The fedge device agent: receives, verifies and swaps models, runs inference, reports telemetry.

Installs with ``pip install "fedge[agent]"`` and imports only the standard library, numpy, paho-mqtt,
onnxruntime, ai-edge-litert (or tflite_runtime) and cryptography: never torch, flwr, opacus or shared_models.
The wire format is :mod:`edge.agent.protocol`; the logic :class:`edge.agent.agent.DeviceAgent`.

    python -m edge.agent --broker mqtt://127.0.0.1:1883 --device-id dev-1 --store ./dev-1 --trust server.pub
"""
