# REMITS: one image for every component; the compose file picks the component with
# `remits worker <stage>` (or `remits setup` for the one-shot JetStream topology job).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Unprivileged runtime user. The data dir is created here, owned by that user, so a fresh named
# volume mounted over it inherits the ownership (Docker copies it on first mount).
RUN groupadd --system --gid 10001 remits \
 && useradd --system --uid 10001 --gid remits --home-dir /var/lib/remits --no-create-home \
        --shell /usr/sbin/nologin remits \
 && mkdir -p /var/lib/remits \
 && chown remits:remits /var/lib/remits

WORKDIR /src
COPY . .
# Regular (non-editable) install: the package lands in site-packages, /src is only the build input.
RUN pip install --no-cache-dir . \
 && rm -rf /src/build /src/*.egg-info

ENV REMITS_DATA_DIR=/var/lib/remits
USER remits
WORKDIR /var/lib/remits
EXPOSE 8080

ENTRYPOINT ["remits"]
CMD ["--help"]
