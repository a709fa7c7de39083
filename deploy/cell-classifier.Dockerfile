# Cell classifier. Two targets:
#   gpu (default in compose): onnxruntime-gpu on a CUDA 13 / cuDNN 9 runtime
#   cpu: onnxruntime on python:3.11-slim
# Multi-stage, slim, non-root. Build context: the repo root.

FROM python:3.11-slim AS wheels-cpu
WORKDIR /build
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS cpu
RUN useradd --create-home --uid 10001 app
COPY --from=wheels-cpu /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY --chown=app shared shared
COPY --chown=app services services
USER app
ENV CELL_HOST=0.0.0.0 CELL_PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/readyz', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "services.cell_classifier"]

FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 app
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH
COPY --from=wheels-cpu /wheels /wheels
# the same service, with onnxruntime-gpu instead of onnxruntime (they install the same module)
RUN pip install --no-cache-dir /wheels/*.whl && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir onnxruntime-gpu && rm -rf /wheels
WORKDIR /app
COPY --chown=app shared shared
COPY --chown=app services services
USER app
ENV CELL_HOST=0.0.0.0 CELL_PORT=8001 CELL_PROVIDER=auto
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8001/readyz', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "services.cell_classifier"]
