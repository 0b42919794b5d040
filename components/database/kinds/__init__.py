"""The kinds of object inside the database, one module each: spec, status, read, plan and apply."""
