# The BraTS Label server (MONAI Label + the app). Built by docker-compose.yml; runs on CPU, or on a
# GPU when the container is given one.
FROM python:3.11-slim-bookworm
WORKDIR /opt/brats_label
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends dicom3tools && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY apps apps
COPY scripts scripts
COPY synthetic synthetic
EXPOSE 8000
ENTRYPOINT ["monailabel", "start_server", "--app", "apps/brats_label", "--host", "127.0.0.1", "--port", "8000"]
CMD ["--studies", "http://127.0.0.1:8042/dicom-web", "--conf", "workspace", "/workspace"]
