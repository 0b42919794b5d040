"""Backups and disaster recovery of a local stack: `scripts/backup` and `scripts/dr-drill`."""
