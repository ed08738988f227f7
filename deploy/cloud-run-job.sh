#!/usr/bin/env bash
# A nightly sweep of one entity in N shards on Cloud Run Jobs: each task gets CLOUD_RUN_TASK_INDEX and
# CLOUD_RUN_TASK_COUNT, which `--shard auto` reads. Reports go to a Cloud Storage bucket mounted at /reports.
# Then merge them (see README.md here). Fill in PROJECT, REGION, IMAGE, BUCKET and the secret's name.
set -euo pipefail
PROJECT=my-gcp-project REGION=europe-west1 IMAGE=REGION-docker.pkg.dev/my-gcp-project/reconciler/reconciler:latest
BUCKET=my-reconciler-reports SHARDS=8

gcloud run jobs deploy reconcile-customers \
  --project "$PROJECT" --region "$REGION" --image "$IMAGE" \
  --tasks "$SHARDS" --parallelism "$SHARDS" --max-retries 2 --task-timeout 6h \
  --cpu 2 --memory 2Gi \
  --set-env-vars GOOGLE_CLOUD_PROJECT="$PROJECT" \
  --set-secrets RECONCILER_PG_DSN=reconciler-pg-dsn:latest \
  --add-volume name=reports,type=cloud-storage,bucket="$BUCKET" \
  --add-volume-mount volume=reports,mount-path=/reports \
  --command /bin/sh \
  --args=-c,'exec reconcile --entity customers --shard auto --workers 2 --report-dir "/reports/$(date -u +%F)/shard-$CLOUD_RUN_TASK_INDEX"'

gcloud run jobs execute reconcile-customers --project "$PROJECT" --region "$REGION" --wait
# then, anywhere the bucket is mounted (or after gsutil cp -r):
#   reconcile merge-reports /reports/$(date -u +%F)/all /reports/$(date -u +%F)/shard-*
