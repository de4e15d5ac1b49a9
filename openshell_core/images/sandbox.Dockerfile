# The sandbox runtime: OpenSSH plus our supervisor (and gRPC, for the supervisor transport's
# dial-out; the nssh1 supervisor needs only the standard library). /sandbox holds the files every new workspace
# is seeded with (once) from this image. It is also root's home, so that sshd starts every SSH
# session (shell, command, SFTP) in the workspace, as upstream's sandbox user starts in /sandbox.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY wheels/ /opt/openshell/wheels/
RUN set -e; \
    pip="$(ls /opt/openshell/wheels/pip-*.whl)/pip"; \
    flags="--no-index --no-cache-dir --disable-pip-version-check --break-system-packages --no-warn-script-location"; \
    python3 "$pip" install $flags --find-links /opt/openshell/wheels -r /opt/openshell/wheels/requirements.txt; \
    python3 "$pip" install $flags --no-deps /opt/openshell/wheels/pytest_openshell-*.whl; \
    rm -rf /opt/openshell/wheels; \
    mkdir -p /run/sshd /sandbox/.config; \
    printf 'Welcome to an OpenShell sandbox.\n' > /sandbox/README.md; \
    printf 'seeded-from-image\n' > /sandbox/.config/seed; \
    ln -s . /sandbox/.config/self; \
    sed -i 's#^\(root:[^:]*:0:0:[^:]*\):/root:#\1:/sandbox:#' /etc/passwd; \
    test "$(getent passwd root | cut -d: -f6)" = /sandbox
ENV PYTHONUNBUFFERED=1
EXPOSE 2222
ENTRYPOINT ["python3", "-m", "openshell_core.sandbox"]
