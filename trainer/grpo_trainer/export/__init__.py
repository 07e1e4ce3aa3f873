"""The export of a succeeded run's result/ to claims, hub repositories and S3 buckets (spec.export)."""
