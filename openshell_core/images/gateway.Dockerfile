# The reference gateway. Built offline: wheels come from the host's wheelhouse, and the build
# runs with no network at all.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG GATEWAY_VARIANT=v1
# The highest store schema version this image opens (read by the host before a resume).
ARG STORE_SCHEMA=1
LABEL openshell.ai/store-schema=${STORE_SCHEMA}
COPY wheels/ /opt/openshell/wheels/
RUN set -e; \
    pip="$(ls /opt/openshell/wheels/pip-*.whl)/pip"; \
    flags="--no-index --no-cache-dir --disable-pip-version-check --break-system-packages --no-warn-script-location"; \
    python3 "$pip" install $flags --find-links /opt/openshell/wheels -r /opt/openshell/wheels/requirements.txt; \
    python3 "$pip" install $flags --no-deps /opt/openshell/wheels/pytest_openshell-*.whl; \
    rm -rf /opt/openshell/wheels
ENV OPENSHELL_GATEWAY_VARIANT=${GATEWAY_VARIANT} PYTHONUNBUFFERED=1
EXPOSE 30051
HEALTHCHECK --interval=1s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "openshell_core.server.healthcheck"]
ENTRYPOINT ["python3", "-m", "openshell_core.server"]
