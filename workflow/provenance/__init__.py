"""Whether a result is current: code versions, provenance records, the plan of what is stale and why, job logs."""
