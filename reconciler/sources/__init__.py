"""Ordered, paged streams of raw records for one entity, one module per database."""
