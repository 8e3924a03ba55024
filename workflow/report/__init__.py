"""What people read: figures, evaluation pages, the interactive explorer (and the report's templates)."""
