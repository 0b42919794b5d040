"""What is inside the database: roles, extensions, schemas, tables, policies, indexes, functions, views."""
