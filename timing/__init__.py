"""Latency, as the robot sees it: the timing protocol, and the agent that applies it on the
robot's own computer.

Stands alone: imports neither torch, MLflow, Optuna nor any other part of ggopt, so that
``ggopt-agent`` installs on a robot with onnxruntime, numpy, starlette and uvicorn only.

- :mod:`timing.protocol`: interleaved timing rounds, statistics, the device fingerprint, and
  ONNX Runtime sessions to time.
- :mod:`timing.agent`: the HTTP server on the robot (``ggopt-agent``).
- :mod:`timing.client`: a study's side of it (token, target URL, uploads, retries).
"""
