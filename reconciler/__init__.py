"""reconciler: audit and repair drift between PostgreSQL and Firestore."""

__version__ = "0.1.0"
