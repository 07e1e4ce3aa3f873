"""An S3 destination: the result's files as objects under a prefix, summary last (a bucket has no
rename: whoever sees ``<prefix>/result.json`` of this export sees the rest of it too)."""

from __future__ import annotations

import boto3
from botocore.config import Config

from grpo_trainer.contract.export import S3Target
from grpo_trainer.export.layout import Files, s3_keys


def upload_to_s3(files: Files, to: S3Target, access_key_id: str, secret_access_key: str) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=to.endpoint_url,
        region_name=to.region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(s3={"addressing_style": to.addressing_style}, retries={"max_attempts": 5, "mode": "standard"}),
    )
    for key, path in s3_keys(to.prefix, files).items():
        client.upload_file(str(path), to.bucket, key)
