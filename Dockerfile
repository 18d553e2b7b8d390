# The clrpipe image for remote execution (MLflow's Kubernetes backend, see deploy/kubernetes/):
# Python 3.11, the environment locked in uv.lock (without the dev tools), the project at /app
# with its config and pipeline files. No data and no MLflow store inside: the Kubernetes job
# mounts the data and $MLFLOW_TRACKING_URI names a tracking server.
#   docker build -t registry.example.com/clrpipe:0.1.0 .
#   docker push registry.example.com/clrpipe:0.1.0
FROM python:3.11-slim

ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

RUN python -m pip install --no-cache-dir uv==0.9.30

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when the lock changes, not the code.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

COPY README.md ./
COPY src/ src/
RUN uv sync --frozen --no-dev --no-editable --compile-bytecode

COPY conf/ conf/
COPY .dvc/ .dvc/
COPY .dvcignore dvc.yaml dvc.lock params.yaml MLproject python_env.yaml ./
COPY metrics/ metrics/

# No .git in the image: DVC runs without an SCM; MLflow tags the parent run with the commit
# of the checkout `mlflow run` was started from.
RUN dvc config --local core.no_scm true

CMD ["clrpipe", "--help"]
