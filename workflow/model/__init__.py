"""A loaded model: where it comes from, the backends that read its residual stream, its head, its resources."""
