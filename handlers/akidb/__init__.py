"""AkiDB 2.0's snapshot formats (docs/akidb-2.0.md): read in place, written on request."""
