# The stack image: slipway's locked environment (uv.lock) and its flows, for the MLflow server, the Prefect server,
# the Prefect worker and the one-shot `prefect deploy` of infra/compose.yaml, and for the flow-run Jobs of the
# Kubernetes work pool (infra/prefect/k8s-base-job-template.json). One image, so that servers and clients run the
# very versions the tests ran. Build from the repository root:
#   docker build -f infra/stack.Dockerfile -t slipway-stack:0.1.0 .
# (The serving image is a different one: BentoML's, built by `slipway image` from a Bento.)
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/slipway/.venv \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    BENTOML_DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false

RUN pip install --no-cache-dir "uv==0.13.9"

# kubectl, for serving.remote.deploy_command in the flow-run Jobs (`kubectl set image` + `kubectl rollout status`
# on the serving Deployment, as the service account of infra/k8s/flows-rbac.yaml). Checked against its published
# sha256. TARGETARCH is set by BuildKit (docker build / buildx).
ARG KUBECTL_VERSION=v1.33.4
ARG TARGETARCH=amd64
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && curl -fsSLo /usr/local/bin/kubectl "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl" \
    && echo "$(curl -fsSL "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl.sha256")  /usr/local/bin/kubectl" \
       | sha256sum -c - \
    && chmod 0755 /usr/local/bin/kubectl \
    && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/slipway
# Dependencies first (a layer that changes only with the lock), without the dev, bench and infra groups.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-default-groups --no-install-project
COPY configs ./configs
COPY tasks ./tasks
COPY flows ./flows
COPY serving ./serving
COPY examples ./examples
COPY infra/prefect.yaml ./infra/prefect.yaml
RUN uv sync --frozen --no-default-groups

ENV PATH=/opt/slipway/.venv/bin:$PATH \
    SLIPWAY__PROJECT__HOME=/var/lib/slipway
RUN useradd --create-home --uid 10001 slipway \
    && mkdir -p /var/lib/slipway /var/lib/mlflow/artifacts \
    && chown slipway:slipway /var/lib/slipway /var/lib/mlflow /var/lib/mlflow/artifacts
USER slipway
CMD ["slipway", "--help"]
