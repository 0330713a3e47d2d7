# imgcls serve in a container: a run folder mounted at /model, answered by onnxruntime, as a non-root user.
#   imgcls export RUN_DIR                       # once, outside: writes RUN_DIR/model.onnx
#   docker build -t imgcls-serve .
#   docker run -p 8000:8000 -e IMGCLS_API_KEY=change-me -v "$PWD/RUN_DIR":/model:ro imgcls-serve
# The build is not tested where the tests run (no Docker there); the CMD and HEALTHCHECK below are
# (tests/test_serve_production.py reads them from this file).
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE

WORKDIR /opt/imgcls
COPY pyproject.toml README.md ./
COPY src ./src
# PyTorch's CPU build (imgcls depends on torch; with the onnx backend a prediction does not import it).
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu \
 && pip install ".[serve,export]" \
 && useradd --create-home --uid 10001 imgcls

USER imgcls
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
CMD ["imgcls", "serve", "/model", "--host", "0.0.0.0", "--port", "8000", "--backend", "onnx", "--log-format", "json"]
