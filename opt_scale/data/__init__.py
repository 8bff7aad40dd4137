"""The streaming data pipeline: shards -> decoded, masked, collated batches."""
