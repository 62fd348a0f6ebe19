# The one image of a sagetrain deployment: the API (`sagetrain serve`), the GPU workers
# (`sagetrain worker`) and the one-shot migration (`sagetrain migrate`) all run it.
#   docker build -t sagetrain .
# The dashboard's chart library, at the version web/package-lock.json pins (as `make vendor`
# does on a development machine): only its one built file goes into the image.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAGETRAIN_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /app

# Dependencies first, in their own layer, so that a code change does not reinstall torch.
# PyPI's Linux torch wheel is the CUDA build, with its CUDA libraries: the workers need no
# CUDA in the image, only the NVIDIA driver on the host (nvidia-container-toolkit).
# The tracking extra: W&B, MLflow and TensorBoard for jobs' `integrations`.
COPY pyproject.toml README.md ./
RUN mkdir -p api worker sage_core sagetrain \
    && pip install ".[tracking]" \
    && pip uninstall -y sagetrain

COPY alembic.ini ./
COPY migrations ./migrations
COPY api ./api
COPY worker ./worker
COPY sage_core ./sage_core
COPY sagetrain ./sagetrain
COPY --from=web /web/node_modules/chart.js/dist/chart.umd.js ./api/static/vendor/chart.umd.js
# Editable, so that `sagetrain migrate` finds migrations/ next to the code it runs.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 sagetrain \
    && mkdir -p /data && chown sagetrain /data

USER sagetrain
VOLUME /data
EXPOSE 8000
CMD ["sagetrain", "serve", "--host", "0.0.0.0", "--port", "8000"]
