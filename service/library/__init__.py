"""The markdown library: teachers' (and admins') uploaded .md files, stored in the database."""
