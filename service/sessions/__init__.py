"""Session rules: lifecycle, events, metadata, access; no HTTP here."""
